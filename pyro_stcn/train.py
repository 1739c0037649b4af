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

The parts. :func:`train` tells the story of a run; each part it calls does one thing:

- :class:`TrainState`: how far the run has got (step, best validation, patience,
  seconds). It is the only state that changes between steps besides the parameters,
  the optimizer and the random state, and is saved in checkpoints as a plain dict.
- :class:`_Run`: the optimizer and learning-rate schedule over the modules' parameters,
  and the parts that use them: ``resume`` (load ``last.pt``), ``step`` (one SVI step
  on one batch, returning its log row), ``validate`` (validation -ELBO, best and
  patience bookkeeping) and ``checkpoint`` (the one place a checkpoint is written).
- :class:`_Clock` (the time budget), :class:`_Progress` (the bar) and :class:`_Log`
  (the CSV log, one row per step).

- :class:`Loss`: the objective's loss for model and guide as a module, the one
  :class:`~torch.nn.parallel.DistributedDataParallel` wraps under torchrun.
- :class:`_Board`: TensorBoard events (``tensorboard=True``): every log row's loss,
  KL of each layer and learning rate, the objective's β and λ, and at each
  validation its -ELBO and KL of each layer and a figure of sampled sequences.

Many processes (``torchrun``; :mod:`pyro_stcn.distributed` says what is and is not
the single-process run): ``step`` trains on this rank's shard of the global batch
and logs the mean over ranks; ``validate`` runs on rank 0 and broadcasts the state;
the clock is rank 0's; only rank 0 writes files or prints. A plain process does
exactly what it did before.

Later guards slot into one part each: a divergence guard into ``step`` (skip an update
whose loss or gradient norm is not finite) and a signal handler between steps of the
loop (``checkpoint`` after the current step).
"""

import csv
import importlib.util
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import matplotlib.pyplot as plt
import pyro
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pyro_stcn import distributed
from pyro_stcn.checkpoint import load_checkpoint, save_checkpoint
from pyro_stcn.data.batching import Splits, shuffled_batches
from pyro_stcn.elbo import LayerwiseELBO
from pyro_stcn.evaluate import evaluate_elbo
from pyro_stcn.plots import plot_sequences


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


@dataclass
class TrainState:
    """How far a run has got. Checkpoints hold it as a plain dict (``asdict``), so
    that they load with ``weights_only=True``; :meth:`from_dict` reads it back."""

    step: int = 0  # optimizer steps taken
    best_valid: float = math.inf  # the lowest validation -ELBO, that of best.pt
    best_step: int = 0  # the step of best.pt; 0 before the first validation
    patience_best: float = math.inf  # the last validation that improved by min_improvement
    bad_validations: int = 0  # validations since patience_best
    stopped_early: bool = False
    seconds: float = 0.0  # of training, validations included, at the last validation

    @classmethod
    def from_dict(cls, saved: dict) -> "TrainState":
        expected = [f.name for f in fields(cls)]
        if sorted(saved) != sorted(expected):
            raise ValueError(f"a checkpoint's train_state has keys {sorted(saved)}, expected {sorted(expected)}")
        return cls(**saved)

    def count_patience(self, valid: float, min_improvement: float, patience: int) -> None:
        """Count validations without a real (relative) improvement: ``valid`` must beat
        ``patience_best`` by ``min_improvement · |patience_best|``; ``patience`` failures
        in a row stop the run."""
        target = self.patience_best
        if math.isinf(target) or valid < target - min_improvement * abs(target):
            self.patience_best, self.bad_validations = valid, 0
        else:
            self.bad_validations += 1
        self.stopped_early = self.bad_validations >= patience


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
    tensorboard: bool = False,
) -> TrainResult:
    """Train ``model``/``guide`` (functions of ``(x, mask)``) whose parameters live in
    ``modules`` on ``data.train``, validating on ``data.valid``.

    ``schedules`` maps an attribute of ``objective`` to a function of the step, e.g.
    ``{"beta": linear_warmup}``. ``run_config`` is stored in every checkpoint. If
    ``run_dir/last.pt`` exists the run resumes from it. ``tensorboard`` also writes
    TensorBoard events to ``run_dir`` (needs the ``tensorboard`` package). In a process
    group (``torchrun``), each rank trains on its shard of every batch.
    """
    _check(config)
    if tensorboard:
        _Board.check_installed()
    run = _Run(model, guide, modules, objective, config, Path(run_dir), schedules or {}, torch.device(device),
               run_config or {})  # fmt: skip
    pyro.set_rng_seed(config.seed)
    state = run.resume()
    main = distributed.is_main()
    log = _Log(run.dir / "log.csv", enabled=main)
    board = _Board(run.dir, objective, modules, data, run.device) if tensorboard and main else None
    stream = shuffled_batches(
        data.train, config.batch_size, config.seed, start=state.step, crop=config.crop, augment=data.augment
    )
    clock = _Clock(config.budget, state.seconds)
    bar = _Progress(config, state, enabled=progress and main)
    try:
        while state.step < config.steps and not state.stopped_early and not clock.out_of_time():
            row = run.step(state, next(stream))
            if state.step % config.valid_every == 0 or state.step == config.steps or clock.out_of_time():
                valid_kl = run.validate(state, data.valid[: config.valid_sequences], clock, row)
                log.write(row)
                log.flush()  # before last.pt: a resumed run drops the rows after its step, never lacks one
                run.checkpoint("last.pt", state)
                if board:
                    board.validation(row, valid_kl)
            else:
                log.write(row)
            if board:
                board.step(row)
            bar.show(state, row, clock)
    except KeyboardInterrupt:
        if main:
            _report_interrupt(run.dir, state)
        raise
    finally:
        bar.close()
        log.close()
        if board:
            board.close()
    return run.result(state)


def _check(config: TrainConfig) -> None:
    if config.steps < 1 or config.valid_every < 1:
        raise ValueError(f"steps and valid_every must be positive, got {config.steps} and {config.valid_every}")
    if config.budget is not None and not 0 < config.budget < math.inf:
        raise ValueError(f"budget must be a positive number of seconds, got {config.budget}")
    if config.valid_sequences is not None and config.valid_sequences < 1:
        raise ValueError(f"valid_sequences must be positive, got {config.valid_sequences}")
    distributed.check_batch(config.batch_size)


class _Clock:
    """Seconds of training, counting those spent before a resumption, against the budget.
    In a process group the decision is rank 0's, broadcast: the ranks' clocks differ."""

    def __init__(self, budget: float | None, spent: float):
        self.budget = budget
        self.started = time.perf_counter() - spent

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def out_of_time(self) -> bool:
        return self.budget is not None and distributed.from_main(self.seconds() >= self.budget)


@dataclass
class _Run:
    """What the steps of a run share: the model, guide and objective, the optimizer and
    its learning-rate schedule over the modules' parameters, and the run folder."""

    model: Callable
    guide: Callable
    modules: dict[str, nn.Module]
    objective: LayerwiseELBO
    config: TrainConfig
    dir: Path
    schedules: dict[str, Callable[[int], float]]
    device: torch.device
    run_config: dict
    params: list[nn.Parameter] = field(init=False)
    loss: nn.Module = field(init=False)  # Loss, in DDP in a process group
    optimizer: torch.optim.Adam = field(init=False)
    scheduler: torch.optim.lr_scheduler.LambdaLR = field(init=False)

    def __post_init__(self) -> None:
        if distributed.is_main():
            self.dir.mkdir(parents=True, exist_ok=True)
        self.params = list({id(p): p for m in self.modules.values() for p in m.parameters()}.values())
        self.loss = distributed.wrap(Loss(self.model, self.guide, self.modules, self.objective), self.device)
        self.optimizer = torch.optim.Adam(self.params, lr=self.config.lr)
        decay, every = self.config.lr_decay, self.config.lr_decay_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: decay ** (step / every))

    def resume(self) -> TrainState:
        """Continue from ``last.pt`` if there is one: parameters, optimizer, learning
        rate, random state and :class:`TrainState`; log rows after its step are dropped."""
        last = self.dir / "last.pt"
        if not last.exists():
            return TrainState()
        ckpt = load_checkpoint(last)  # on the CPU: RNG states must stay there
        self._load_modules(ckpt)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"])
        if ckpt["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        state = TrainState.from_dict(ckpt["train_state"])
        if not distributed.is_main():
            return state
        _truncate_log(self.dir / "log.csv", state.step)
        tqdm.write(f"resuming {self.dir} from step {state.step}")
        if state.stopped_early:
            tqdm.write(f"this run stopped early at step {state.step}: nothing left to train")
        return state

    def step(self, state: TrainState, batch: tuple[Tensor, Tensor]) -> dict:
        """One SVI step on ``batch`` (x [batch, time, channels], mask [batch, time]);
        returns its log row, the loss and KLs per sequence. In a process group the step
        is on this rank's shard, its noise drawn from (seed, step, rank), and the row's
        figures are the means over ranks: those of the global batch."""
        for attr, schedule in self.schedules.items():
            setattr(self.objective, attr, schedule(state.step))
        if distributed.active():
            torch.manual_seed(distributed.noise_seed(self.config.seed, state.step))
        x, mask = (t.to(self.device) for t in distributed.shard(batch))
        loss = self.loss(x, mask)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # in DDP: the gradients all-reduced to their mean over ranks
        torch.nn.utils.clip_grad_norm_(self.params, self.config.clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        state.step += 1
        kl = self.objective.kl
        figures = {
            "loss": loss.item(),
            "kl": sum(kl.values()) / len(x),
            **{f"kl_{name}": value / len(x) for name, value in sorted(kl.items())},
        }
        figures = dict(zip(figures, distributed.mean(list(figures.values()))))
        return {"step": state.step, "loss": figures.pop("loss"), "kl": figures.pop("kl"),
                "lr": self.optimizer.param_groups[0]["lr"], **figures}  # fmt: skip

    def validate(self, state: TrainState, sequences: Sequence[Tensor], clock: _Clock, row: dict) -> dict[str, float]:
        """The validation -ELBO of ``sequences``; a new best writes ``best.pt``, then
        patience and the time are counted. Adds the validation's log columns to ``row``
        and returns the validation KL of each layer. In a process group rank 0
        validates and every rank takes its state (and so its decisions)."""
        valid, kl = math.nan, {}
        if distributed.is_main():
            report = evaluate_elbo(self.model, self.guide, sequences, device=self.device)
            valid, kl = report.per_sequence, report.kl_per_sequence
            if valid < state.best_valid:
                state.best_valid, state.best_step = valid, state.step
                self.checkpoint("best.pt", state)
            state.count_patience(valid, self.config.min_improvement, self.config.patience)
            state.seconds = clock.seconds()
        if distributed.active():  # after best.pt is written: every rank may read it from here on
            saved, valid = distributed.from_main((asdict(state), valid))
            vars(state).update(saved)
        row.update(valid_loss=valid, seconds=state.seconds)
        return kl

    def checkpoint(self, filename: str, state: TrainState) -> None:
        """Write ``run_dir/filename`` atomically: everything a resumed run needs (rank
        0 alone; the ranks' modules and optimizers are the same)."""
        if not distributed.is_main():
            return
        save_checkpoint(
            {
                **{name: m.state_dict() for name, m in self.modules.items()},
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
                "train_state": asdict(state),
                "train_config": asdict(self.config),
                "run_config": self.run_config,
            },
            self.dir / filename,
        )

    def result(self, state: TrainState) -> TrainResult:
        """Load ``best.pt`` into the modules and sum the run up."""
        self._load_modules(load_checkpoint(self.dir / "best.pt"))
        out_of_time = state.step < self.config.steps and not state.stopped_early
        return TrainResult(state.best_step, state.best_valid, state.step, state.stopped_early, state.seconds,
                           out_of_time)  # fmt: skip

    def _load_modules(self, ckpt: dict) -> None:
        for name, module in self.modules.items():
            module.load_state_dict(ckpt[name])


class Loss(nn.Module):
    """``objective.differentiable_loss(model, guide, x, mask) / batch``: the loss per
    sequence of a batch (x [batch, time, channels], mask [batch, time]) as a module
    over ``modules``, so that DDP can wrap it and average its gradients over ranks
    while Pyro traces model and guide inside ``forward`` as it always does."""

    def __init__(self, model: Callable, guide: Callable, modules: dict[str, nn.Module], objective: LayerwiseELBO):
        super().__init__()
        self.parts = nn.ModuleDict(modules)  # the parameters DDP keeps in step
        self.model, self.guide, self.objective = model, guide, objective

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.objective.differentiable_loss(self.model, self.guide, x, mask) / len(x)


class _Progress:
    """The progress bar: with a time budget it counts seconds of it, otherwise steps."""

    def __init__(self, config: TrainConfig, state: TrainState, enabled: bool):
        self.timed = config.budget is not None
        self.total = round(config.budget) if self.timed else config.steps
        done = min(round(state.seconds), self.total) if self.timed else state.step
        timed_format = "{desc}: {percentage:3.0f}%|{bar}| {n}/{total} s of the budget{postfix}"
        self.bar = tqdm(total=self.total, initial=done, disable=not enabled, dynamic_ncols=True, desc="train",
                        bar_format=timed_format if self.timed else None)  # fmt: skip

    def show(self, state: TrainState, row: dict, clock: _Clock) -> None:
        self.bar.update(min(round(clock.seconds()), self.total) - self.bar.n if self.timed else 1)
        best = f"{state.best_valid:.2f}" if state.best_step else "-"
        self.bar.set_postfix(
            step=state.step, loss=f"{row['loss']:.2f}", kl=f"{row['kl']:.2f}", best_valid=best, refresh=False
        )

    def close(self) -> None:
        self.bar.close()


def _report_interrupt(run_dir: Path, state: TrainState) -> None:
    last = run_dir / "last.pt"
    saved = load_checkpoint(last)["train_state"]["step"] if last.exists() else 0
    tqdm.write(f"interrupted at step {state.step}; resuming {run_dir} continues from step {saved}")


class _Log:
    """The CSV log, one row per step; its columns are fixed by the first row written.
    Disabled (on ranks other than 0), it writes nothing."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.file = open(path, "a", newline="") if enabled else None
        self.writer = None
        if enabled and path.stat().st_size:
            with open(path, newline="") as f:
                self.writer = csv.DictWriter(self.file, fieldnames=next(csv.reader(f)))

    def write(self, row: dict) -> None:
        if self.file is None:
            return
        if self.writer is None:
            extra = [k for k in row if k not in LOG_FIELDS]
            self.writer = csv.DictWriter(self.file, fieldnames=LOG_FIELDS + extra)
            self.writer.writeheader()
        self.writer.writerow(row)

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class _Board:
    """TensorBoard events in the run directory, beside the CSV log: at every step the
    log row's loss, KL (total and per layer, nats per sequence) and learning rate, and
    the objective's β and λ where it has them (``train/...``); at every validation the
    validation -ELBO and KL of each layer (``valid/...``) and ``samples``, a figure of
    sequences drawn by ``modules["model"].generate`` as ``data.kind`` (fixed seed, on
    a forked random state: training draws what it would without TensorBoard)."""

    SAMPLES = 8  # sequences in the figure

    @staticmethod
    def check_installed() -> None:
        if importlib.util.find_spec("tensorboard") is None:
            raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard")
        return _Board

    def __init__(self, run_dir: Path, objective: LayerwiseELBO, modules: dict[str, nn.Module], data: Splits,
                 device: torch.device):  # fmt: skip
        from torch.utils.tensorboard import SummaryWriter  # optional: only with --tensorboard

        self.writer = SummaryWriter(str(run_dir))
        self.objective, self.data, self.device = objective, data, device
        self.generate = getattr(modules.get("model"), "generate", None)

    def step(self, row: dict) -> None:
        step = row["step"]
        for key in ("loss", "kl", "lr", *(k for k in row if k.startswith("kl_"))):
            self.writer.add_scalar(f"train/{key}", row[key], step)
        for attr in ("beta", "lam"):  # β (annealing) and λ (free bits), as set for this step
            if hasattr(self.objective, attr):
                self.writer.add_scalar(f"train/{attr}", getattr(self.objective, attr), step)

    def validation(self, row: dict, kl: dict[str, float]) -> None:
        step = row["step"]
        self.writer.add_scalar("valid/loss", row["valid_loss"], step)
        for name, value in kl.items():
            self.writer.add_scalar(f"valid/kl_{name}", value, step)
        if self.generate is not None:
            self.writer.add_image("samples", self._samples(), step, dataformats="HWC")
        self.writer.flush()

    def _samples(self):
        """The sample figure as an image array [height, width, channels]."""
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            torch.manual_seed(0)
            generated = self.generate(self.SAMPLES, len(self.data.test[0])).cpu()
        png = io.BytesIO()
        plot_sequences({"generated": generated}, self.data.kind, png)
        png.seek(0)
        return plt.imread(png, format="png")

    def close(self) -> None:
        self.writer.close()


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows after ``step``: a resumed run writes them again."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    keep = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= step]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(keep)
