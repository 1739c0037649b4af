"""Stop signals: noted while a step runs, acted on between steps."""

import signal
import threading

from pyro_stcn.training import distributed


class Interrupted(Exception):
    """Training stopped by a signal after a whole step, ``last.pt`` written."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class Signals:
    """SIGTERM and SIGINT noted, not acted on, while training: the loop stops after the
    current step. A second signal of the same kind acts at once, as it would have."""

    NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT (Ctrl-C)"}

    def __init__(self):
        self.caught: int | None = None
        self.previous = {}

    def _note(self, signum, frame) -> None:
        self.caught = signum
        signal.signal(signum, self.previous[signum])

    def __enter__(self) -> "Signals":
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

    def interrupted(self, step: int, run_dir) -> Interrupted:
        """The signal (another rank's if this one caught none: SIGTERM) and the one line that says where to resume."""
        signum = self.caught or signal.SIGTERM
        return Interrupted(signum, f"stopped by {self.NAMES[signum]} after step {step}; saved {run_dir / 'last.pt'}: "
                                   f"continue with  pyro-stcn train --resume {run_dir}")  # fmt: skip
