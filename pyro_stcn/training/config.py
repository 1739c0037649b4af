"""What a training run is told (:class:`TrainConfig`), how far it has got
(:class:`TrainState`, saved in checkpoints) and how it ended (:class:`TrainResult`)."""

import math
from dataclasses import dataclass, fields

from pyro_stcn.errors import SettingError


@dataclass
class TrainConfig:
    """The optimiser, schedule and stopping rules of a run (the authors' defaults where
    the papers give them: Adam, gradient norm clipped at 1, 10 validations of patience
    and a 0.25% relative improvement)."""

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
    bf16: bool = False  # the training step's networks in bfloat16 (nets.precision); evaluation in float32
    compile: bool = False  # the networks compiled by torch.compile (nets.compiled)

    def check(self) -> None:
        """Refuse values that cannot mean anything, naming the setting
        (:class:`~pyro_stcn.errors.SettingError`; the command line names its flag)."""
        for name in ("steps", "batch_size", "valid_every", "valid_sequences", "crop", "lr_decay_steps", "patience"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SettingError(f"<{name}>: {name} must be positive, got {value}")
        if not 0 < self.lr < math.inf:
            raise SettingError(f"<lr>: the learning rate must be a positive number, got {self.lr:g}")
        if not 0 < self.lr_decay <= 1:
            raise SettingError(f"<lr_decay>: the learning rate's factor every {self.lr_decay_steps} steps must be in "
                               f"(0, 1], got {self.lr_decay:g}")  # fmt: skip
        if self.budget is not None and not 0 < self.budget < math.inf:
            raise SettingError(f"<budget>: expected a positive number of seconds, got {self.budget:g}")
        check_seed(self.seed)


def check_seed(seed: int) -> None:
    """Refuse a seed that numpy's and torch's generators would not both take as it is
    (numpy refuses a negative one in its own words, torch wraps it around)."""
    if not 0 <= seed < 2**32:
        raise SettingError(f"<seed>: expected a whole number from 0 to 2**32 - 1, got {seed}")


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
