"""Training: the loop (:func:`train`), its one extension seam (:class:`Callback`) and
the callbacks built on it, checkpoints, the divergence guard, stop signals, one run
per directory, and torchrun."""

from pyro_stcn.training.callbacks import Callback, CSVLog, PeriodicCheckpoint, ProgressBar
from pyro_stcn.training.config import TrainConfig, TrainResult, TrainState
from pyro_stcn.training.guard import Diverged
from pyro_stcn.training.loop import Trainer, train
from pyro_stcn.training.signals import Interrupted

__all__ = [
    "CSVLog",
    "Callback",
    "Diverged",
    "Interrupted",
    "PeriodicCheckpoint",
    "ProgressBar",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "Trainer",
    "train",
]
