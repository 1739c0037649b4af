"""Training by SVI: Adam with exponential learning-rate decay and gradient-norm
clipping, validation with early stopping, atomic checkpoints, and resumption.

Each step draws a batch, sets the objective's schedule attributes (β, λ), computes
``objective.differentiable_loss(model, guide, x, mask)`` (the true -ELBO as value,
the objective's surrogate as gradient), divides it by the batch size, and takes an
Adam step after clipping the global gradient norm. The parameters are those of the
modules passed in, so nothing depends on Pyro's global param store.

A step reads the device once: the loss, the gradient norm and the KL of each layer
come back to the host together, for the log and the divergence guard (the loss and
the objective's KLs stay tensors until then; Pyro's validation, whose checks read
the device, is on for the first step of each process only). So on a GPU the host
queues the next step's work while the current one runs. ``config.bf16`` computes
the step's loss with the networks in bfloat16 (:mod:`pyro_stcn.nets.precision`).

With a ``budget`` of seconds, training also stops when that much wall-clock time has
passed (validations included, the time before a resumption too), after a last
validation; ``run.py compare`` trains every model for the same budget.

Every ``valid_every`` steps the validation -ELBO (β = 1, λ = 0, fixed random draws)
is computed, on the first ``valid_sequences`` validation sequences if that is set.
Each new best saves ``best.pt``; ``patience`` validations without a relative
improvement of ``min_improvement`` stop the run (the authors' 10 evaluations and 0.25%).
``last.pt`` is written after the first step (so a resumed run never starts over
silently), at each validation, every ``checkpoint_every`` seconds if that is set, and
when a signal stops the run; an interrupted run resumes from it exactly: parameters,
optimizer, learning rate, random state and the batch stream all continue where they
were. ``log.csv`` holds each step once: rows after ``last.pt``'s step, and a row torn
by a crash, are dropped on resumption.

Reliability (what a user can count on):

- **Preemption.** SIGTERM or SIGINT (Ctrl-C) lets the current step finish, writes
  ``last.pt`` and raises :class:`Interrupted`, whose message says where to resume
  from (the command line prints it and exits with 128 + the signal's number). Under
  torchrun every rank stops after the same step.
- **Divergence.** A step whose loss or gradient norm is not finite makes no update
  (parameters and optimizer untouched) and is counted in the log's ``skipped``
  column; :data:`MAX_SKIPPED_IN_A_ROW` such steps in a row, or a validation -ELBO
  that is not finite or above :data:`EXPLODED_NATS_PER_STEP` nats per step, raise
  :class:`Diverged` without writing ``last.pt``: the last good checkpoints stay.

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

Many processes (``torchrun``; :mod:`pyro_stcn.training.distributed` says what is and is not
the single-process run): ``step`` trains on this rank's shard of the global batch
and logs the mean over ranks; ``validate`` runs on rank 0 and broadcasts the state;
the clock is rank 0's; only rank 0 writes files or prints. A plain process does
exactly what it did before.

The guards each live in one part: the divergence guard in ``step`` and ``validate``
(:class:`_Guard` counts), the signal handler (:class:`_Signals`) between steps of the
loop. :data:`TEST_HOOKS` (the ``PYRO_STCN_TEST_HOOKS`` variable) lets the tests put a
NaN, a signal or a ``kill -9`` at a chosen step, so that their timing is exact.
"""

import contextlib
import csv
import importlib.util
import io
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import matplotlib.pyplot as plt
import pyro
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pyro_stcn.data.batching import Splits, shuffled_batches
from pyro_stcn.evaluation.bounds import evaluate_elbo
from pyro_stcn.evaluation.plots import plot_sequences
from pyro_stcn.inference.objectives import LayerwiseELBO
from pyro_stcn.nets.precision import network_autocast
from pyro_stcn.training import distributed
from pyro_stcn.training.checkpoint import load_checkpoint, save_checkpoint


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
    bf16: bool = False  # the training step's networks in bfloat16 (precision.network_autocast); evaluation in float32


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


LOG_FIELDS = ["step", "loss", "kl", "lr", "valid_loss", "seconds", "skipped"]  # skipped: steps so far with no update
MAX_SKIPPED_IN_A_ROW = 5  # non-finite steps in a row that stop a run
EXPLODED_NATS_PER_STEP = 1e6  # a validation -ELBO above this per time step has exploded


class Interrupted(Exception):
    """Training stopped by a signal after a whole step, ``last.pt`` written."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class Diverged(RuntimeError):
    """Training stopped because the loss, the gradients or the validation -ELBO are no
    longer finite numbers; the last good checkpoints are left as they were."""


@dataclass
class _Guard:
    """The divergence guard's counts, saved in checkpoints beside :class:`TrainState`."""

    skipped: int = 0  # steps that made no update
    in_a_row: int = 0  # of them, the latest consecutive ones

    def count(self, finite: bool) -> None:
        self.skipped += not finite
        self.in_a_row = 0 if finite else self.in_a_row + 1


class _Hooks:
    """Test hooks from ``PYRO_STCN_TEST_HOOKS``, e.g. ``nan@3,sigterm@5,kill-in-checkpoint@10``:
    a NaN loss at step 3, SIGTERM (or ``sigint``) sent to this process during step 5,
    ``kill -9`` of this process while ``last.pt`` of step 10 is being written."""

    def __init__(self, text: str):
        self.events = {tuple(item.split("@")) for item in text.split(",") if item}

    def at(self, event: str, step: int) -> bool:
        return (event, str(step)) in self.events

    def during_step(self, step: int) -> None:
        for name in ("sigterm", "sigint"):
            if self.at(name, step):
                os.kill(os.getpid(), getattr(signal, name.upper()))

    def in_checkpoint(self, step: int):
        if self.at("kill-in-checkpoint", step):
            return lambda tmp: os.kill(os.getpid(), signal.SIGKILL)
        return None


TEST_HOOKS = _Hooks(os.environ.get("PYRO_STCN_TEST_HOOKS", ""))


class _Signals:
    """SIGTERM and SIGINT noted, not acted on, while training: the loop stops after the
    current step. A second signal of the same kind acts at once, as it would have."""

    NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT (Ctrl-C)"}

    def __init__(self):
        self.caught: int | None = None
        self.previous = {}

    def _note(self, signum, frame) -> None:
        self.caught = signum
        signal.signal(signum, self.previous[signum])

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():  # only there can handlers be set
            for signum in self.NAMES:
                self.previous[signum] = signal.signal(signum, self._note)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def stop(self) -> bool:
        """Whether to stop after this step: a signal here, or on any rank."""
        return distributed.any_rank(self.caught is not None)


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
    checkpoint_every: float | None = None,
) -> TrainResult:
    """Train ``model``/``guide`` (functions of ``(x, mask)``) whose parameters live in
    ``modules`` on ``data.train``, validating on ``data.valid``.

    ``schedules`` maps an attribute of ``objective`` to a function of the step, e.g.
    ``{"beta": linear_warmup}``. ``run_config`` is stored in every checkpoint. If
    ``run_dir/last.pt`` exists the run resumes from it. ``tensorboard`` also writes
    TensorBoard events to ``run_dir`` (needs the ``tensorboard`` package);
    ``checkpoint_every`` seconds also writes ``last.pt`` that often. In a process
    group (``torchrun``), each rank trains on its shard of every batch. With
    ``config.bf16`` each step's loss is computed with the networks in bfloat16
    (:func:`pyro_stcn.nets.precision.network_autocast`; its densities in float32);
    validation is float32 always.

    Raises :class:`Interrupted` after SIGTERM or SIGINT (``last.pt`` written) and
    :class:`Diverged` when training diverges (the last good checkpoints kept).
    """
    _check(config)
    _check_finite(data)
    if checkpoint_every is not None and not 0 < checkpoint_every < math.inf:
        raise ValueError(f"--checkpoint-every must be a positive number of minutes, got {checkpoint_every / 60:g}")
    if tensorboard:
        _Board.check_installed()
    _check_device(config, torch.device(device))
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
    saved_at = time.monotonic()
    try:
        with _Signals() as signals:
            while state.step < config.steps and not state.stopped_early and not clock.out_of_time():
                row = run.step(state, next(stream))
                stop = signals.stop()
                validating = state.step % config.valid_every == 0 or state.step == config.steps
                if validating or clock.out_of_time():
                    valid_kl = run.validate(state, data.valid[: config.valid_sequences], clock, row)
                    if board:
                        board.validation(row, valid_kl)
                log.write(row)
                run.guard_check(state)  # diverged: the rows are logged, last.pt is not written
                due = checkpoint_every is not None and time.monotonic() - saved_at >= checkpoint_every
                if "valid_loss" in row or state.step == 1 or stop or due:
                    log.flush()  # before last.pt: a resumed run drops the rows after its step, never lacks one
                    run.checkpoint("last.pt", state, None if "valid_loss" in row else clock)  # validate timed it
                    saved_at = time.monotonic()
                if board:
                    board.step(row)
                bar.show(state, row, clock)
                if stop:
                    raise Interrupted(*_stopped_message(signals.caught, state, run.dir))
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


def _stopped_message(signum: int | None, state: TrainState, run_dir: Path) -> tuple[int, str]:
    """The signal (another rank's if this one caught none: SIGTERM) and the one line that says where to resume."""
    signum = signum or signal.SIGTERM
    return signum, (f"stopped by {_Signals.NAMES[signum]} after step {state.step}; saved {run_dir / 'last.pt'}: "
                    f"continue with  pyro-stcn train --resume {run_dir}")  # fmt: skip


def _check(config: TrainConfig) -> None:
    if config.steps < 1 or config.valid_every < 1:
        raise ValueError(f"steps and valid_every must be positive, got {config.steps} and {config.valid_every}")
    if config.budget is not None and not 0 < config.budget < math.inf:
        raise ValueError(f"budget must be a positive number of seconds, got {config.budget}")
    if config.valid_sequences is not None and config.valid_sequences < 1:
        raise ValueError(f"valid_sequences must be positive, got {config.valid_sequences}")
    distributed.check_batch(config.batch_size)


def _check_finite(data: Splits) -> None:
    """Every training sequence finite, checked once here on the host: the steps after
    the first run without Pyro's validation, where a NaN batch would only be a skipped
    step (the command line's loaders check this too; data from Python may not be)."""
    for i, x in enumerate(data.train):
        if not torch.isfinite(x).all():
            step = int((~torch.isfinite(x)).reshape(len(x), -1).any(1).nonzero()[0])
            raise ValueError(f"training sequence {i} holds NaN or infinite values (step {step}); data must be finite")


def _check_device(config: TrainConfig, device: torch.device) -> None:
    if config.bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ValueError(f"--bf16: {torch.cuda.get_device_name(device)} has no bfloat16 arithmetic; train without it")


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
    guard: _Guard = field(default_factory=_Guard)
    checked: bool = field(default=False, init=False)  # whether a step of this process has run with Pyro's validation

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
        rate, random state and :class:`TrainState`; log rows after its step (all of
        them without one) are dropped, and temporary files of an interrupted write."""
        last = self.dir / "last.pt"
        if distributed.is_main():
            for tmp in self.dir.glob("*.tmp"):
                tmp.unlink()
        if not last.exists():
            if distributed.is_main():
                _truncate_log(self.dir / "log.csv", 0)
            return TrainState()
        ckpt = load_checkpoint(last)  # on the CPU: RNG states must stay there
        self._load_modules(ckpt)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"])
        if ckpt["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        state = TrainState.from_dict(ckpt["train_state"])
        self.guard = _Guard(**ckpt.get("guard", {}))  # absent from checkpoints older than the guard
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
        figures are the means over ranks: those of the global batch. A loss or gradient
        norm that is not finite (on any rank: the means are not then) makes no update.
        The figures come to the host in one transfer, the step's only one."""
        for attr, schedule in self.schedules.items():
            setattr(self.objective, attr, schedule(state.step))
        if distributed.active():
            torch.manual_seed(distributed.noise_seed(self.config.seed, state.step))
        x, mask = (t.to(self.device) for t in distributed.shard(batch))
        with warnings.catch_warnings():  # Pyro's "Encountered NaN": the guard below counts such steps
            warnings.filterwarnings("ignore", message="Encountered NaN")
            with self._checks(), network_autocast(self.device, self.config.bf16):
                loss = self.loss(x, mask)
            if TEST_HOOKS.at("nan", state.step + 1):
                loss = loss * math.nan
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # in DDP: the gradients all-reduced to their mean over ranks
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.clip_norm)
        TEST_HOOKS.during_step(state.step + 1)
        kl = self.objective.kl  # detached 0-dim tensors on the device
        figures = {
            "loss": loss.detach(),
            "kl": sum(kl.values(), torch.zeros((), dtype=torch.float64, device=loss.device)) / len(x),
            **{f"kl_{name}": value / len(x) for name, value in sorted(kl.items())},
            "norm": norm,
        }
        # the step's one read from the device: everything logged and decided on, at once
        values = distributed.mean(torch.stack([value.double() for value in figures.values()]))
        figures = dict(zip(figures, values))
        finite = math.isfinite(figures["loss"]) and math.isfinite(figures.pop("norm"))
        if finite:
            self.optimizer.step()
        self.scheduler.step()  # the learning rate is a function of the step, skipped or not
        state.step += 1
        self.guard.count(finite)
        return {"step": state.step, "loss": figures.pop("loss"), "kl": figures.pop("kl"),
                "lr": self.optimizer.param_groups[0]["lr"], "skipped": self.guard.skipped, **figures}  # fmt: skip

    def _checks(self) -> contextlib.AbstractContextManager:
        """Pyro's validation as set, for the first step of this process; off after it.

        Its checks (a distribution's arguments within their constraints, a batch's mask
        and finiteness, NaN log-densities) each read a value back from the device: a
        host synchronisation apiece. The first step keeps them, so that a model's or a
        batch's mistake still fails at once with its message; a parameter that turns
        NaN later gives a NaN loss, which the divergence guard counts."""
        if self.checked:
            return pyro.validation_enabled(False)
        self.checked = True
        return contextlib.nullcontext()

    def guard_check(self, state: TrainState) -> None:
        """Raise :class:`Diverged` after :data:`MAX_SKIPPED_IN_A_ROW` non-finite steps in a row."""
        if self.guard.in_a_row < MAX_SKIPPED_IN_A_ROW:
            return
        first = state.step - self.guard.in_a_row + 1
        raise Diverged(
            f"training diverged: the loss or gradient norm was not finite at {self.guard.in_a_row} steps in a row "
            f"(steps {first} to {state.step}), which made no update. {self._causes()}"
        )

    def _causes(self) -> str:
        last = self.dir / "last.pt"
        kept = f"{last} (step {load_checkpoint(last)['train_state']['step']})" if last.exists() else "no last.pt"
        return (f"Likely causes: a learning rate too high for this model (lr {self.config.lr:g}, --lr) or data far "
                f"from unit scale (look at the largest values of --data). The last good checkpoint is kept: {kept}; "
                "train a new run with a lower --lr")  # fmt: skip

    def validate(self, state: TrainState, sequences: Sequence[Tensor], clock: _Clock, row: dict) -> dict[str, float]:
        """The validation -ELBO of ``sequences``; a new best writes ``best.pt``, then
        patience and the time are counted. Adds the validation's log columns to ``row``
        and returns the validation KL of each layer. In a process group rank 0
        validates and every rank takes its state (and so its decisions)."""
        valid, kl, exploded = math.nan, {}, False
        if distributed.is_main():
            report = evaluate_elbo(self.model, self.guide, sequences, device=self.device)
            valid, kl = report.per_sequence, report.kl_per_sequence
            exploded = not math.isfinite(report.per_step) or report.per_step > EXPLODED_NATS_PER_STEP
        if distributed.from_main(exploded):
            valid = distributed.from_main(valid)
            raise Diverged(
                f"training diverged: the validation -ELBO at step {state.step} exploded to {valid:.3g} nats per "
                f"sequence (more than {EXPLODED_NATS_PER_STEP:.0e} per time step, or not a number); it is not a "
                f"result. {self._causes()}"
            )
        if distributed.is_main():
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

    def checkpoint(self, filename: str, state: TrainState, clock: _Clock | None = None) -> None:
        """Write ``run_dir/filename`` atomically: everything a resumed run needs (rank
        0 alone; the ranks' modules and optimizers are the same). With the ``clock``,
        the seconds spent so far are saved too."""
        if not distributed.is_main():
            return
        if clock is not None:
            state.seconds = clock.seconds()
        save_checkpoint(
            {
                **{name: m.state_dict() for name, m in self.modules.items()},
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
                "train_state": asdict(state),
                "guard": asdict(self.guard),
                "train_config": asdict(self.config),
                "run_config": self.run_config,
            },
            self.dir / filename,
            before_replace=TEST_HOOKS.in_checkpoint(state.step) if filename == "last.pt" else None,
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
        try:
            return self.objective.differentiable_loss(self.model, self.guide, x, mask) / len(x)
        except ValueError as e:
            if "found invalid values" not in str(e):  # torch's words for a distribution's NaN or inf parameter
                raise
        # diverged inside the model: a NaN loss on every parameter, which the guard skips (and in DDP
        # every rank still takes part in the gradients' all-reduce)
        return math.nan * sum(p.sum() for p in self.parameters())


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
        self.fields = None
        if enabled and path.stat().st_size:
            with open(path, newline="") as f:
                self.fields = next(csv.reader(f))

    def write(self, row: dict) -> None:
        """Append ``row`` in one write (columns a log from an older version lacks are left out)."""
        if self.file is None:
            return
        text = io.StringIO()
        if self.fields is None:
            self.fields = LOG_FIELDS + [k for k in row if k not in LOG_FIELDS]
            csv.writer(text).writerow(self.fields)
        csv.DictWriter(text, fieldnames=self.fields, extrasaction="ignore").writerow(row)
        self.file.write(text.getvalue())

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
    """Drop log rows after ``step`` (a resumed run writes them again) and a last row
    torn by a crash (no line end); with ``step`` 0, the header too."""
    if not path.exists():
        return
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    rows = list(csv.reader(lines))
    keep = [rows[0]] + [r for r in rows[1:] if len(r) == len(rows[0]) and int(r[0]) <= step] if rows and step else []
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(keep)
