"""Training by SVI: Adam with exponential learning-rate decay and gradient-norm
clipping, validation with early stopping, atomic checkpoints, and resumption.

Each step draws a batch, sets the objective's schedule attributes (β, λ), computes
``objective.differentiable_loss(model, guide, x, mask)`` (the true -ELBO as value,
the objective's surrogate as gradient) through :class:`LossModule`, divides it by the
batch size, and takes an Adam step after clipping the global gradient norm. The
parameters are those of the modules passed in, so nothing depends on Pyro's global
param store.

A step reads the device once: the loss, the gradient norm and the KL of each layer
come back to the host together, for the log and the divergence guard (Pyro's
validation, whose checks read the device, is on for the first step of each process
only). ``config.bf16`` computes the step's loss with the networks in bfloat16
(:mod:`pyro_stcn.nets.precision`); ``config.compile`` compiles them
(:mod:`pyro_stcn.nets.compiled`).

With a ``budget`` of seconds, training also stops when that much wall-clock time has
passed (validations included, the time before a resumption too), after a last
validation. Every ``valid_every`` steps the validation -ELBO (β = 1, λ = 0, fixed
random draws) is computed; each new best saves ``best.pt``; ``patience`` validations
without a relative improvement of ``min_improvement`` stop the run. ``last.pt`` is
written after the first step (so a resumed run never starts over silently), at each
validation, when a callback asks (:class:`~pyro_stcn.training.callbacks.PeriodicCheckpoint`)
and when a signal stops the run; a run resumes from it exactly: parameters, optimizer,
learning rate, random state and the batch stream all continue where they were.

What a user can count on: a stop signal (SIGTERM, SIGINT, SIGHUP, SIGUSR1 or SIGUSR2:
:mod:`pyro_stcn.training.signals`) lets the current step finish, writes ``last.pt`` and
raises :class:`~pyro_stcn.training.signals.Interrupted` (under torchrun every rank stops
after the same step); a step whose loss or gradient norm is not
finite makes no update and is counted, and too many in a row, or an exploding
validation, raise :class:`~pyro_stcn.training.guard.Diverged` with the last good
checkpoints kept.

The loop itself is :func:`train`; :class:`Trainer` holds what the steps share and does
one step, one validation, one checkpoint; logging and progress are callbacks
(:mod:`pyro_stcn.training.callbacks`). Under torchrun (:mod:`pyro_stcn.training.distributed`)
each rank trains on its shard of the global batch, rank 0 validates and writes.
"""

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyro
import torch
from pyro.infer.elbo import ELBOModule
from torch import Tensor, nn
from tqdm.auto import tqdm

from pyro_stcn.data.batching import Splits, shuffled_batches
from pyro_stcn.evaluation.bounds import evaluate_elbo
from pyro_stcn.inference.objectives import LayerwiseELBO
from pyro_stcn.nets.compiled import compile_networks
from pyro_stcn.nets.precision import network_autocast
from pyro_stcn.training import distributed
from pyro_stcn.training.callbacks import Callback
from pyro_stcn.training.checkpoint import load_checkpoint, save_checkpoint
from pyro_stcn.training.config import TrainConfig, TrainResult, TrainState
from pyro_stcn.training.guard import EXPLODED_NATS_PER_STEP, Diverged, Guard
from pyro_stcn.training.optimizer import adam, load_adam_state, param_groups
from pyro_stcn.training.signals import Signals


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
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train ``model``/``guide`` (functions of ``(x, mask)``) whose parameters live in
    ``modules`` on ``data.train``, validating on ``data.valid``; ``callbacks`` are told
    each step (the CSV log, the progress bar and TensorBoard are callbacks).

    ``schedules`` maps an attribute of ``objective`` to a function of the step, e.g.
    ``{"beta": linear_warmup}``. ``run_config`` is stored in every checkpoint. If
    ``run_dir/last.pt`` exists the run resumes from it. In a process group
    (``torchrun``), each rank trains on its shard of every batch.

    Raises :class:`~pyro_stcn.training.signals.Interrupted` after a stop signal
    (``last.pt`` written) and :class:`~pyro_stcn.training.guard.Diverged` when training
    diverges (the last good checkpoints kept).
    """
    config.check()
    distributed.check_global_batch(config.batch_size)
    _check_finite(data)
    _check_device(config, torch.device(device))
    if config.compile:
        compile_networks(*modules.values(), device=device)
    trainer = Trainer(model, guide, modules, objective, config, Path(run_dir), schedules or {}, torch.device(device),
                      run_config or {})  # fmt: skip
    pyro.set_rng_seed(config.seed)
    state = trainer.resume()
    stream = shuffled_batches(
        data.train, config.batch_size, config.seed, start=state.step, crop=config.crop, augment=data.augment
    )
    trainer.clock = Clock(config.budget, state.seconds)
    trainer.callbacks = list(callbacks)
    try:
        for callback in trainer.callbacks:
            callback.on_train_start(trainer, state)
        with Signals() as signals:
            while state.step < config.steps and not state.stopped_early and not trainer.clock.out_of_time():
                row = trainer.step(state, next(stream))
                if state.step % config.valid_every == 0 or state.step == config.steps or trainer.clock.out_of_time():
                    trainer.validate(state, data.valid[: config.valid_sequences], row)
                for callback in trainer.callbacks:
                    callback.on_step(trainer, state, row)
                trainer.check_divergence(state)  # diverged: the rows are logged, last.pt is not written
                stop = signals.stop()
                if "valid_loss" in row or state.step == 1 or stop or trainer.checkpoint_requested:
                    trainer.checkpoint("last.pt", state, timed="valid_loss" not in row)  # validate timed it
                if stop:
                    raise signals.interrupted(state.step, trainer.dir)
    except BaseException as error:
        for callback in trainer.callbacks:
            callback.on_exception(trainer, state, error)
        raise
    finally:
        for callback in trainer.callbacks:
            callback.on_train_end(trainer, state)
    return trainer.result(state)


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
        raise ValueError(f"bf16: {torch.cuda.get_device_name(device)} has no bfloat16 arithmetic; train without it")


class Clock:
    """Seconds of training, counting those spent before a resumption, against the budget.
    In a process group the decision is rank 0's, broadcast: the ranks' clocks differ."""

    def __init__(self, budget: float | None, spent: float):
        self.budget = budget
        self.started = time.perf_counter() - spent

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def out_of_time(self) -> bool:
        return self.budget is not None and distributed.from_main(self.seconds() >= self.budget)


class LossModule(ELBOModule):
    """Pyro's ``ELBOModule`` (the objective's ``differentiable_loss`` of model and guide
    as a module) over ``modules``, the loss per sequence of a batch, so that DDP can
    wrap it and average its gradients over ranks while Pyro traces model and guide
    inside ``forward`` as it always does. ``model`` and ``guide`` may be functions (a
    module's bound ``model`` method); their parameters are those of ``modules``."""

    def __init__(self, model: Callable, guide: Callable, modules: dict[str, nn.Module], objective: LayerwiseELBO):
        super().__init__(model, guide, objective)
        self.parts = nn.ModuleDict(modules)  # the parameters DDP keeps in step

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        try:
            return super().forward(x, mask) / len(x)
        except ValueError:
            # With validation on (a process's first step), a distribution refuses parameters that are not
            # finite. If a parameter already is, the run has diverged: a NaN loss on every parameter, which
            # the guard skips (and in DDP every rank still takes part in the gradients' all-reduce).
            if all(torch.isfinite(p).all() for p in self.parameters()):
                raise
        return math.nan * sum(p.sum() for p in self.parameters())


@dataclass
class Trainer:
    """What the steps of a run share: the model, guide and objective, the optimizer and
    its learning-rate schedule over the modules' parameters, the run folder, the clock
    and the callbacks; and one step, one validation and one checkpoint of the run."""

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
    loss: nn.Module = field(init=False)  # LossModule, in DDP in a process group
    optimizer: torch.optim.Adam = field(init=False)
    scheduler: torch.optim.lr_scheduler.LambdaLR = field(init=False)
    guard: Guard = field(default_factory=Guard)
    clock: Clock | None = None
    callbacks: list[Callback] = field(default_factory=list)
    checkpoint_requested: bool = False
    checked: bool = field(default=False, init=False)  # whether a step of this process has run with Pyro's validation

    def __post_init__(self) -> None:
        if self.main:
            self.dir.mkdir(parents=True, exist_ok=True)
        self.params = list({id(p): p for m in self.modules.values() for p in m.parameters()}.values())
        self.loss = distributed.wrap(LossModule(self.model, self.guide, self.modules, self.objective), self.device)
        self.build_optimizer(param_groups(self.modules.values(), self.config.lr))

    def build_optimizer(self, groups: list[dict]) -> None:
        c = self.config
        self.optimizer, self.scheduler = adam(groups, c.lr, c.lr_decay, c.lr_decay_steps)

    @property
    def main(self) -> bool:
        """Whether this process writes files and prints (rank 0 under torchrun)."""
        return distributed.is_main()

    def request_checkpoint(self) -> None:
        """Write ``last.pt`` after this step (a callback's request)."""
        self.checkpoint_requested = True

    def resume(self) -> TrainState:
        """Continue from ``last.pt`` if there is one: parameters, optimizer, learning
        rate, random state and :class:`TrainState`; temporary files of an interrupted
        write are removed."""
        last = self.dir / "last.pt"
        if self.main:
            for tmp in self.dir.glob("*.tmp"):
                tmp.unlink()
        if not last.exists():
            return TrainState()
        ckpt = load_checkpoint(last)  # on the CPU: RNG states must stay there
        self._load_modules(ckpt)
        if len(ckpt["optimizer"]["param_groups"]) != len(self.optimizer.param_groups):
            # saved before its module asked for a rate of its own (an IAF guide): resume as it trained
            self.build_optimizer([{"params": self.params, "lr": self.config.lr}])
        load_adam_state(self.optimizer, ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"])
        if ckpt["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        state = TrainState.from_dict(ckpt["train_state"])
        self.guard = Guard(**ckpt.get("guard", {}))  # absent from checkpoints older than the guard
        if self.main:
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
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # in DDP: the gradients all-reduced to their mean over ranks
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.clip_norm, foreach=True)
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
        norm = figures.pop("norm")  # decided on, not logged
        finite = math.isfinite(figures["loss"]) and math.isfinite(norm)
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

    def check_divergence(self, state: TrainState) -> None:
        """Raise :class:`Diverged` after too many non-finite steps in a row (:class:`Guard`)."""
        what = self.guard.diverged(state.step)
        if what is not None:
            raise Diverged(f"training diverged: {what}. {self._causes()}")

    def _causes(self) -> str:
        last = self.dir / "last.pt"
        kept = f"{last} (step {load_checkpoint(last)['train_state']['step']})" if last.exists() else "no last.pt"
        return (f"Likely causes: a learning rate too high for this model (lr {self.config.lr:g}, --lr) or data far "
                f"from unit scale (look at the largest values of --data). The last good checkpoint is kept: {kept}; "
                "train a new run with a lower --lr")  # fmt: skip

    def validate(self, state: TrainState, sequences: Sequence[Tensor], row: dict) -> None:
        """The validation -ELBO of ``sequences``; a new best writes ``best.pt``, then
        patience and the time are counted. Adds the validation's log columns to ``row``
        and tells the callbacks, with the validation KL of each layer. In a process
        group rank 0 validates and every rank takes its state (and so its decisions)."""
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
            state.seconds = self.clock.seconds()
        if distributed.active():  # after best.pt is written: every rank may read it from here on
            saved, valid = distributed.from_main((asdict(state), valid))
            vars(state).update(saved)
        row.update(valid_loss=valid, seconds=state.seconds)
        for callback in self.callbacks:
            callback.on_validation(self, state, row, kl)

    def checkpoint(self, filename: str, state: TrainState, timed: bool = False) -> None:
        """Write ``run_dir/filename`` atomically: everything a resumed run needs (rank
        0 alone; the ranks' modules and optimizers are the same), after telling the
        callbacks. ``timed``: save the seconds spent so far too (a validation has
        already counted them)."""
        if filename == "last.pt":
            self.checkpoint_requested = False
        if not self.main:
            return
        if timed:
            state.seconds = self.clock.seconds()
        for callback in self.callbacks:
            callback.on_checkpoint(self, state, filename)
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
