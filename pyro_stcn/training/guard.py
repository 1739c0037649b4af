"""The divergence guard: a step whose loss or gradient norm is not finite makes no
update and is counted; :data:`MAX_SKIPPED_IN_A_ROW` of them in a row, or a validation
-ELBO that explodes, stop the run with :class:`Diverged`."""

from dataclasses import dataclass

MAX_SKIPPED_IN_A_ROW = 5  # non-finite steps in a row that stop a run
EXPLODED_NATS_PER_STEP = 1e6  # a validation -ELBO above this per time step has exploded


class Diverged(RuntimeError):
    """Training stopped because the loss, the gradients or the validation -ELBO are no
    longer finite numbers; the last good checkpoints are left as they were."""


@dataclass
class Guard:
    """The guard's counts, saved in checkpoints beside the training state."""

    skipped: int = 0  # steps that made no update
    in_a_row: int = 0  # of them, the latest consecutive ones

    def count(self, finite: bool) -> None:
        self.skipped += not finite
        self.in_a_row = 0 if finite else self.in_a_row + 1

    def diverged(self, step: int) -> str | None:
        """What went wrong, if :data:`MAX_SKIPPED_IN_A_ROW` steps in a row up to ``step`` made no update."""
        if self.in_a_row < MAX_SKIPPED_IN_A_ROW:
            return None
        return (f"the loss or gradient norm was not finite at {self.in_a_row} steps in a row (steps "
                f"{step - self.in_a_row + 1} to {step}), which made no update")  # fmt: skip
