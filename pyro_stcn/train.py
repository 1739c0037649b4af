"""Training by SVI: Adam with exponential learning-rate decay and gradient-norm
clipping, validation with early stopping, atomic checkpoints, and resumption.

Each step draws a batch, sets the objective's schedule attributes (β, λ), computes
``objective.differentiable_loss(model, guide, x, mask)`` (the true -ELBO as value,
the objective's surrogate as gradient), divides it by the batch size, and takes an
Adam step after clipping the global gradient norm. The parameters are those of the
modules passed in, so nothing depends on Pyro's global param store.

With a ``budget`` of seconds, training also stops when that much wall-clock time has
passed (validations included, the time before a resumption too), after a last
validation; ``run.py compare`` trains every model for the same budget.

Every ``valid_every`` steps the validation -ELBO (β = 1, λ = 0, fixed random draws)
is computed, on the first ``valid_sequences`` validation sequences if that is set.
Each new best saves ``best.pt``; ``patience`` validations without a relative
improvement of ``min_improvement`` stop the run (the authors' 10 evaluations and 0.25%).
``last.pt`` is written at each validation; an interrupted run resumes from it exactly:
parameters, optimizer, learning rate, random state and the batch stream all continue
where they were.
"""

import csv
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pyro
import torch
from torch import nn
from tqdm.auto import tqdm

from pyro_stcn.checkpoint import load_checkpoint, save_checkpoint
from pyro_stcn.data.batching import Splits, shuffled_batches
from pyro_stcn.elbo import LayerwiseELBO
from pyro_stcn.evaluate import evaluate_elbo


@dataclass
class TrainConfig:
    steps: int = 5000
    batch_size: int = 20
    lr: float = 5e-4
    lr_decay: float = 0.94  # lr · lr_decay^(step / lr_decay_steps)
    lr_decay_steps: int = 1000
    clip_norm: float = 1.0  # global gradient norm
    valid_every: int = 250
    valid_sequences: int | None = None  # validate on the first N only (large validation sets)
    patience: int = 10  # validations without improvement before stopping
    min_improvement: float = 0.0025  # relative
    seed: int = 0
    crop: int | None = None  # train on random windows of this many steps (evaluation sees whole sequences)
    budget: float | None = None  # stop after this many seconds of training, validations included


@dataclass
class TrainResult:
    best_step: int
    best_valid: float  # validation -ELBO, nats per sequence
    last_step: int
    stopped_early: bool
    seconds: float
    out_of_time: bool  # stopped by the time budget


LOG_FIELDS = ["step", "loss", "kl", "lr", "valid_loss", "seconds"]


def train(
    model: Callable,
    guide: Callable,
    modules: dict[str, nn.Module],
    objective: LayerwiseELBO,
    data: Splits,
    config: TrainConfig,
    run_dir: str | Path,
    schedules: dict[str, Callable[[int], float]] | None = None,
    device: torch.device | str = "cpu",
    run_config: dict | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model``/``guide`` (functions of ``(x, mask)``) whose parameters live in
    ``modules`` on ``data.train``, validating on ``data.valid``.

    ``schedules`` maps an attribute of ``objective`` to a function of the step, e.g.
    ``{"beta": linear_warmup}``. ``run_config`` is stored in every checkpoint. If
    ``run_dir/last.pt`` exists the run resumes from it.
    """
    if config.steps < 1 or config.valid_every < 1:
        raise ValueError(f"steps and valid_every must be positive, got {config.steps} and {config.valid_every}")
    if config.budget is not None and not 0 < config.budget < math.inf:
        raise ValueError(f"budget must be a positive number of seconds, got {config.budget}")
    if config.valid_sequences is not None and config.valid_sequences < 1:
        raise ValueError(f"valid_sequences must be positive, got {config.valid_sequences}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    schedules = schedules or {}
    params = list({id(p): p for m in modules.values() for p in m.parameters()}.values())
    optimizer = torch.optim.Adam(params, lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: config.lr_decay ** (step / config.lr_decay_steps)
    )

    pyro.set_rng_seed(config.seed)
    state = {
        "step": 0,
        "best_valid": float("inf"),
        "best_step": 0,
        "patience_best": float("inf"),  # the last validation that improved by min_improvement
        "bad_validations": 0,
        "stopped_early": False,
        "seconds": 0.0,
    }
    last = run_dir / "last.pt"
    if last.exists():
        ckpt = load_checkpoint(last)  # on the CPU: RNG states must stay there
        for name, module in modules.items():
            module.load_state_dict(ckpt[name])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"])
        if ckpt["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        state = ckpt["train_state"]
        _truncate_log(run_dir / "log.csv", state["step"])
        tqdm.write(f"resuming {run_dir} from step {state['step']}")
        if state["stopped_early"]:
            tqdm.write(f"this run stopped early at step {state['step']}: nothing left to train")

    def checkpoint(path: Path) -> None:
        save_checkpoint(
            {
                **{name: m.state_dict() for name, m in modules.items()},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
                "train_state": dict(state),
                "train_config": asdict(config),
                "run_config": run_config or {},
            },
            path,
        )

    log = _Log(run_dir / "log.csv")
    stream = shuffled_batches(
        data.train, config.batch_size, config.seed, start=state["step"], crop=config.crop, augment=data.augment
    )
    started = time.perf_counter() - state["seconds"]

    def out_of_time() -> bool:
        return config.budget is not None and time.perf_counter() - started >= config.budget

    # With a time budget the bar counts seconds of it; otherwise steps.
    timed = config.budget is not None
    total = round(config.budget) if timed else config.steps
    done = min(round(state["seconds"]), total) if timed else state["step"]
    timed_format = "{desc}: {percentage:3.0f}%|{bar}| {n}/{total} s of the budget{postfix}"
    bar = tqdm(total=total, initial=done, disable=not progress, dynamic_ncols=True, desc="train",
               bar_format=timed_format if timed else None)  # fmt: skip
    try:
        while state["step"] < config.steps and not state["stopped_early"] and not out_of_time():
            step = state["step"]
            for attr, schedule in schedules.items():
                setattr(objective, attr, schedule(step))
            x, mask = next(stream)
            x, mask = x.to(device), mask.to(device)
            loss = objective.differentiable_loss(model, guide, x, mask) / len(x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.clip_norm)
            optimizer.step()
            scheduler.step()
            state["step"] = step = step + 1

            row = {
                "step": step,
                "loss": loss.item(),
                "kl": sum(objective.kl.values()) / len(x),
                "lr": optimizer.param_groups[0]["lr"],
                **{f"kl_{name}": value / len(x) for name, value in sorted(objective.kl.items())},
            }
            if step % config.valid_every == 0 or step == config.steps or out_of_time():
                valid = evaluate_elbo(model, guide, data.valid[: config.valid_sequences], device=device).per_sequence
                if valid < state["best_valid"]:
                    state.update(best_valid=valid, best_step=step)
                    checkpoint(run_dir / "best.pt")
                # Patience counts validations without a real (relative) improvement.
                target = state["patience_best"]
                if math.isinf(target) or valid < target - config.min_improvement * abs(target):
                    state.update(patience_best=valid, bad_validations=0)
                else:
                    state["bad_validations"] += 1
                state["stopped_early"] = state["bad_validations"] >= config.patience
                state["seconds"] = time.perf_counter() - started
                row.update(valid_loss=valid, seconds=state["seconds"])
                log.write(row)
                log.flush()
                checkpoint(last)
            else:
                log.write(row)
            bar.update(min(round(time.perf_counter() - started), total) - bar.n if timed else 1)
            best = f"{state['best_valid']:.2f}" if state["best_step"] else "-"
            bar.set_postfix(step=step, loss=f"{row['loss']:.2f}", kl=f"{row['kl']:.2f}", best_valid=best, refresh=False)
    except KeyboardInterrupt:
        saved = load_checkpoint(last)["train_state"]["step"] if last.exists() else 0
        tqdm.write(f"interrupted at step {state['step']}; resuming {run_dir} continues from step {saved}")
        raise
    finally:
        bar.close()
        log.close()

    timed_out = state["step"] < config.steps and not state["stopped_early"]
    best = load_checkpoint(run_dir / "best.pt")
    for name, module in modules.items():
        module.load_state_dict(best[name])
    return TrainResult(
        state["best_step"], state["best_valid"], state["step"], state["stopped_early"], state["seconds"], timed_out
    )


class _Log:
    """The CSV log, one row per step; its columns are fixed by the first row written."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "a", newline="")
        self.writer = None
        if path.stat().st_size:
            with open(path, newline="") as f:
                self.writer = csv.DictWriter(self.file, fieldnames=next(csv.reader(f)))

    def write(self, row: dict) -> None:
        if self.writer is None:
            extra = [k for k in row if k not in LOG_FIELDS]
            self.writer = csv.DictWriter(self.file, fieldnames=LOG_FIELDS + extra)
            self.writer.writeheader()
        self.writer.writerow(row)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows after ``step``: a resumed run writes them again."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    keep = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= step]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(keep)
