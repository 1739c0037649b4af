"""Faults at exact steps, for the reliability tests (the library reads no test switch).

    python tests/faults.py FAULTS train ARGS...     # run.py train ARGS, with FAULTS

FAULTS is a comma-separated list of ``EVENT@STEP``:

- ``nan@3``: the loss of step 3 is NaN (so its gradients are);
- ``sigterm@5``, ``sigint@5``, ``sighup@5``, ``sigusr1@5``, ``sigusr2@5``: the signal
  sent to this process as step 5 ends; ``sigusr1@5:1``: by the process of rank 1 alone
  (under torchrun);
- ``hangup@5``: as step 5 ends, the process says ``waiting for a hang-up`` on stdout and
  waits (up to a minute) for the SIGHUP of a real hang-up: its terminal closed by whoever
  reads it (the signal is held back until then, so none is missed);
- ``kill-in-checkpoint@10``: ``kill -9`` of this process once the temporary file of
  step 10's ``last.pt`` is complete, before it replaces ``last.pt``.

In a test's own process, :func:`injected` does the same around a block and gives the
callback to pass to training (the command line's callbacks are patched to include it).
"""

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import torch

from pyro_stcn.training import Callback
from pyro_stcn.training.loop import LossModule


class Faults(Callback):
    """The events of a FAULTS text, kept in step with the run (from a resumed step too)."""

    def __init__(self, text: str):
        rank = os.environ.get("RANK", "0")
        items = [item.partition(":") for item in text.split(",") if item]  # EVENT@STEP[:RANK]
        self.events = {tuple(event.split("@")) for event, _, only in items if only in ("", rank)}
        self.step = 0

    def at(self, event: str, step: int) -> bool:
        return (event, str(step)) in self.events

    def on_train_start(self, trainer, state) -> None:
        self.step = state.step

    def on_step(self, trainer, state, row) -> None:
        for event, step in self.events:
            if step == str(state.step) and event.startswith("sig"):
                os.kill(os.getpid(), getattr(signal, event.upper()))
        if self.at("hangup", state.step):
            wait_for_hang_up()


def wait_for_hang_up() -> None:
    """Say so on stdout, then wait for a SIGHUP (held back meanwhile) and let it through to
    the training's handler."""
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGHUP])
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), b"waiting for a hang-up\n")  # one write: all of it is out before the hang-up
    deadline = time.monotonic() + 60
    while signal.SIGHUP not in signal.sigpending() and time.monotonic() < deadline:
        time.sleep(0.01)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGHUP])  # delivered here, if it came


@contextlib.contextmanager
def injected(text: str):
    """Within the block, training suffers the faults of ``text``; yields the callback."""
    faults = Faults(text)
    loss_forward, replace = LossModule.forward, os.replace

    def forward(self, x, mask):
        faults.step += 1
        loss = loss_forward(self, x, mask)
        return loss * float("nan") if faults.at("nan", faults.step) else loss

    def checkpoint_replace(src, dst):
        if Path(dst).name == "last.pt":
            step = torch.load(src, weights_only=True)["train_state"]["step"]
            if faults.at("kill-in-checkpoint", step):
                os.kill(os.getpid(), signal.SIGKILL)
        return replace(src, dst)

    import pyro_stcn.cli.train as cli

    chosen = cli.callbacks
    LossModule.forward, os.replace = forward, checkpoint_replace
    cli.callbacks = lambda args, data: [*chosen(args, data), faults]
    try:
        yield faults
    finally:
        LossModule.forward, os.replace, cli.callbacks = loss_forward, replace, chosen


if __name__ == "__main__":
    from pyro_stcn.cli import main

    with injected(sys.argv[1]):
        main(sys.argv[2:])
