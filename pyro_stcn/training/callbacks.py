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

from pyro_stcn.training.checkpoint import load_checkpoint, replace_atomically
from pyro_stcn.training.config import TrainState

LOG_FIELDS = ["step", "loss", "kl", "lr", "valid_loss", "seconds", "skipped"]  # skipped: steps so far with no update
# A log written before the divergence guard (issue 15) lacks "skipped"; resuming migrates it.
OLD_LOG_FIELDS = [name for name in LOG_FIELDS if name != "skipped"]
LAYER_PREFIX = "kl_"  # after the fixed columns, one column per latent layer: kl_NAME
VALIDATION_ONLY = {"valid_loss", "seconds"}  # columns of rows at validations only


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
    KL of each layer); its columns are fixed by the first row written. On resuming, the
    log is checked (:func:`log_header`: another program's file is refused, an older
    version's migrated) and rows after the checkpoint's step (all of them without one) and
    a row torn by a crash are dropped, so the log holds each step once; a row whose
    columns are not the log's is refused, never written. Rows are flushed before every
    ``last.pt``, which then never lacks a row a resumed run would not write again."""

    def __init__(self):
        self.file, self.fields, self.path = None, None, None

    def on_train_start(self, trainer, state: TrainState) -> None:
        if not trainer.main:
            return
        self.path = trainer.dir / "log.csv"
        truncate_log(self.path, state.step)
        self.fields = log_header(self.path)
        self.file = open(self.path, "a", newline="")

    def on_step(self, trainer, state: TrainState, row: dict) -> None:
        """Append ``row`` in one write."""
        if self.file is None:
            return
        text = io.StringIO()
        if self.fields is None:
            self.fields = LOG_FIELDS + [k for k in row if k not in LOG_FIELDS]
            csv.writer(text).writerow(self.fields)
        unknown = [k for k in row if k not in self.fields]
        if unknown or [k for k in self.fields if k not in row and k not in VALIDATION_ONLY]:
            ours = LOG_FIELDS + [k for k in row if k not in LOG_FIELDS]
            raise ValueError(f"{self.path} has the columns {','.join(self.fields)}, but this run logs "
                             f"{','.join(ours)} (another model's log?); nothing was written to it: move it aside to "
                             "resume with a new log")  # fmt: skip
        csv.DictWriter(text, fieldnames=self.fields).writerow(row)
        self.file.write(text.getvalue())

    def on_checkpoint(self, trainer, state: TrainState, filename: str) -> None:
        if self.file is not None and filename == "last.pt":
            self.file.flush()

    def on_train_end(self, trainer, state: TrainState) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def log_header(path: Path) -> list[str] | None:
    """The columns of the log at ``path`` (None if there is none, or it is empty), once
    checked: those of this version (:data:`LOG_FIELDS`, then ``kl_NAME`` for each latent
    layer) or of an older one (:data:`OLD_LOG_FIELDS`, then the same), which
    :func:`truncate_log` migrates. Anything else is another program's file, refused in
    one line, so that a resumed run neither writes rows that do not match it nor loses them."""
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        return None
    expected = (f"expected a pyro-stcn log, whose header is {','.join(LOG_FIELDS)} then {LAYER_PREFIX}NAME for each "
                "latent layer")  # fmt: skip
    try:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path} cannot be read as a CSV log ({e}); {expected}") from None
    for fields in (LOG_FIELDS, OLD_LOG_FIELDS):
        if header[: len(fields)] == fields and all(k.startswith(LAYER_PREFIX) for k in header[len(fields) :]):
            return header
    raise ValueError(f"{path} has the header {','.join(header)!r}; {expected} (or an older version's, without "
                     "skipped); nothing was trained or written: move it aside to resume with a new log")  # fmt: skip


def truncate_log(path: Path, step: int) -> None:
    """Drop log rows after ``step`` (a resumed run writes them again) and a last row
    torn by a crash (no line end); with ``step`` 0, the header too. A log of an older
    version gets this version's columns, empty in its rows. The file is replaced
    atomically; a log :func:`log_header` refuses is left as it is."""
    header = log_header(path)
    if header is None:
        return
    lines = path.read_text().splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    fields = header if header[: len(LOG_FIELDS)] == LOG_FIELDS else LOG_FIELDS + header[len(OLD_LOG_FIELDS) :]
    keep = [fields] if step else []
    for number, row in enumerate(csv.reader(lines[1:]), start=2):
        if not step or len(row) != len(header):
            continue
        if not row[0].isdigit():
            raise ValueError(f"{path}, line {number}: the step is {row[0]!r}; expected a whole number")
        if int(row[0]) <= step:
            values = dict(zip(header, row))
            keep.append([values.get(k, "") for k in fields])
    text = io.StringIO()
    csv.writer(text).writerows(keep)
    replace_atomically(path, lambda f: f.write(text.getvalue().encode()))


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
