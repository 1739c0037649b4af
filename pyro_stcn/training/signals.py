"""Stop signals: noted while a step runs, acted on between steps.

Every signal that asks a process to stop and can be caught is handled the same way:
SIGTERM (what ``kill`` and most schedulers send before they stop a job), SIGINT
(Ctrl-C), SIGHUP (the terminal or the session went away), and SIGUSR1 and SIGUSR2
(what a scheduler sends ahead of a time limit when asked: SLURM's
``--signal=USR1@120``). The run finishes its step, writes ``last.pt`` and exits
with 128 + the signal; the same command with ``--resume`` continues it.
"""

import signal
import threading

from pyro_stcn.training import distributed


class Interrupted(Exception):
    """Training stopped by a signal after a whole step, ``last.pt`` written."""

    def __init__(self, signum: int, message: str, main: bool = True):
        super().__init__(message)
        self.signum = signum
        self.main = main  # whether this process says so (rank 0 alone under torchrun: every rank stopped)


class Signals:
    """The stop signals of :data:`NAMES` noted, not acted on, while training: the loop
    stops after the current step. A second signal of the same kind acts at once, as it
    would have."""

    NAMES = {
        signal.SIGTERM: "SIGTERM",
        signal.SIGINT: "SIGINT (Ctrl-C)",
        signal.SIGHUP: "SIGHUP (hang-up)",
        signal.SIGUSR1: "SIGUSR1",
        signal.SIGUSR2: "SIGUSR2",
    }

    def __init__(self):
        self.caught: int | None = None  # set by the handler, at any moment
        self.agreed = 0  # the signal every rank stops for (0: none), decided between steps
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
        """Whether to stop after this step: a signal here, or on any rank. Under torchrun
        every rank takes the signal caught (the highest number, if ranks caught different
        ones), so that all of them stop after the same step and exit with the same code."""
        self.agreed = distributed.largest(self.caught or 0)
        return self.agreed > 0

    def interrupted(self, step: int, run_dir) -> Interrupted:
        """The signal and the one line that says where to resume."""
        name, last = self.NAMES[self.agreed], run_dir / "last.pt"
        return Interrupted(self.agreed, f"stopped by {name} after step {step}; saved {last}: continue with  "
                                        f"pyro-stcn train --resume {run_dir}", distributed.is_main())  # fmt: skip
