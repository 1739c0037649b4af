"""The training loop's one extension seam, and the callbacks that use it.

A :class:`Callback` is told what the loop does: it starts (after resuming), it takes a
step (with the step's log row), it validates, it is about to write a checkpoint, it
fails, it ends. Logging, the progress bar and periodic checkpoints are callbacks; a
logger of your own (wandb, MLflow), an average of the weights or a metric is one more,
passed to :func:`pyro_stcn.training.loop.train` (or :func:`pyro_stcn.runs.train_run`):

    class PrintEvery(Callback):
        def on_step(self, trainer, state, row):
            if trainer.main and state.step % 100 == 0:
                print(state.step, row["loss"])

A callback reads the trainer (``trainer.dir``, ``trainer.config``, ``trainer.objective``,
``trainer.modules``, ``trainer.main``: whether this process writes, rank 0 under
torchrun) and may ask for ``last.pt`` to be written after this step
(``trainer.request_checkpoint()``). It must not change the parameters, the optimizer or
the random state, which a resumed run must find as they were (the sample figure of
:class:`~pyro_stcn.training.tensorboard.TensorBoard` draws on a forked random state).
"""

import csv
import io
import time
from pathlib import Path

from tqdm.auto import tqdm

from pyro_stcn.training.checkpoint import load_checkpoint
from pyro_stcn.training.config import TrainState

LOG_FIELDS = ["step", "loss", "kl", "lr", "valid_loss", "seconds", "skipped"]  # skipped: steps so far with no update


class Callback:
    """Hooks into training; each does nothing unless overridden. Every process of a
    torchrun job calls them; ``trainer.main`` is True on the one that writes files."""

    def on_train_start(self, trainer, state: TrainState) -> None:
        """After the run is resumed (``state.step`` > 0) or set up, before its first step."""

    def on_validation(self, trainer, state: TrainState, row: dict, kl: dict[str, float]) -> None:
        """After a validation: ``row`` holds ``valid_loss``; ``kl`` the validation KL of each layer."""

    def on_step(self, trainer, state: TrainState, row: dict) -> None:
        """After each step (and its validation, if any): ``row`` is its log row (step, loss,
        kl, lr, skipped, the KL of each layer, and at validations valid_loss and seconds),
        figures per sequence, in nats."""

    def on_checkpoint(self, trainer, state: TrainState, filename: str) -> None:
        """Just before ``filename`` (``last.pt`` or ``best.pt``) is written for ``state``."""

    def on_exception(self, trainer, state: TrainState, error: BaseException) -> None:
        """Training raised ``error`` (a signal's :class:`~pyro_stcn.training.signals.Interrupted`,
        ``Diverged``, Ctrl-C); it is raised again after every callback has been told."""

    def on_train_end(self, trainer, state: TrainState) -> None:
        """Last, always, after success or failure: release files here."""


class CSVLog(Callback):
    """``log.csv`` in the run directory, one row per step (:data:`LOG_FIELDS`, then the
    KL of each layer); its columns are fixed by the first row written. On resuming,
    rows after the checkpoint's step (all of them without one) and a row torn by a crash
    are dropped, so the log holds each step once; its rows are flushed before every
    ``last.pt``, which then never lacks a row a resumed run would not write again."""

    def __init__(self):
        self.file, self.fields = None, None

    def on_train_start(self, trainer, state: TrainState) -> None:
        if not trainer.main:
            return
        path = trainer.dir / "log.csv"
        truncate_log(path, state.step)
        self.file = open(path, "a", newline="")
        if path.stat().st_size:
            with open(path, newline="") as f:
                self.fields = next(csv.reader(f))

    def on_step(self, trainer, state: TrainState, row: dict) -> None:
        """Append ``row`` in one write (columns a log from an older version lacks are left out)."""
        if self.file is None:
            return
        text = io.StringIO()
        if self.fields is None:
            self.fields = LOG_FIELDS + [k for k in row if k not in LOG_FIELDS]
            csv.writer(text).writerow(self.fields)
        csv.DictWriter(text, fieldnames=self.fields, extrasaction="ignore").writerow(row)
        self.file.write(text.getvalue())

    def on_checkpoint(self, trainer, state: TrainState, filename: str) -> None:
        if self.file is not None and filename == "last.pt":
            self.file.flush()

    def on_train_end(self, trainer, state: TrainState) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def truncate_log(path: Path, step: int) -> None:
    """Drop log rows after ``step`` (a resumed run writes them again) and a last row
    torn by a crash (no line end); with ``step`` 0, the header too."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    rows = list(csv.reader(lines))
    keep = [rows[0]] + [r for r in rows[1:] if len(r) == len(rows[0]) and int(r[0]) <= step] if rows and step else []
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(keep)


class ProgressBar(Callback):
    """A tqdm bar: with a time budget it counts seconds of it, otherwise steps; it shows
    the step, loss, KL and best validation so far. Ctrl-C prints where a resumed run
    will continue from."""

    def __init__(self):
        self.bar = None

    def on_train_start(self, trainer, state: TrainState) -> None:
        config = trainer.config
        self.timed = config.budget is not None
        self.total = round(config.budget) if self.timed else config.steps
        done = min(round(state.seconds), self.total) if self.timed else state.step
        timed_format = "{desc}: {percentage:3.0f}%|{bar}| {n}/{total} s of the budget{postfix}"
        self.bar = tqdm(total=self.total, initial=done, disable=not trainer.main, dynamic_ncols=True, desc="train",
                        bar_format=timed_format if self.timed else None)  # fmt: skip

    def on_step(self, trainer, state: TrainState, row: dict) -> None:
        self.bar.update(min(round(trainer.clock.seconds()), self.total) - self.bar.n if self.timed else 1)
        best = f"{state.best_valid:.2f}" if state.best_step else "-"
        self.bar.set_postfix(
            step=state.step, loss=f"{row['loss']:.2f}", kl=f"{row['kl']:.2f}", best_valid=best, refresh=False
        )

    def on_exception(self, trainer, state: TrainState, error: BaseException) -> None:
        if isinstance(error, KeyboardInterrupt) and trainer.main:
            last = trainer.dir / "last.pt"
            saved = load_checkpoint(last)["train_state"]["step"] if last.exists() else 0
            tqdm.write(f"interrupted at step {state.step}; resuming {trainer.dir} continues from step {saved}")

    def on_train_end(self, trainer, state: TrainState) -> None:
        if self.bar is not None:
            self.bar.close()


class PeriodicCheckpoint(Callback):
    """``last.pt`` every ``seconds`` of wall-clock time too (it is written at each
    validation, after the first step and when a signal stops the run anyway)."""

    def __init__(self, seconds: float):
        if not 0 < seconds < float("inf"):
            raise ValueError(f"a periodic checkpoint needs a positive number of seconds, got {seconds:g}")
        self.seconds = seconds

    def on_train_start(self, trainer, state: TrainState) -> None:
        self.saved_at = time.monotonic()

    def on_step(self, trainer, state: TrainState, row: dict) -> None:
        if time.monotonic() - self.saved_at >= self.seconds:
            trainer.request_checkpoint()

    def on_checkpoint(self, trainer, state: TrainState, filename: str) -> None:
        if filename == "last.pt":
            self.saved_at = time.monotonic()
