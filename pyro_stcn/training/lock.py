"""One process per run directory: a lock file, ``RUN/.lock``.

The lock is an exclusive ``flock`` on that file, which the kernel releases when the
process ends however it ends (``kill -9`` included), so a lock left by a dead process
is stale by construction: the next process takes it. The file holds the holder's
process id and host, for the message that refuses a second process.
"""

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyro_stcn.training import distributed

LOCK_NAME = ".lock"


class RunInUse(ValueError):
    """Another live process holds the run directory's lock."""


class RunLock:
    """The lock of ``run_dir`` (created if need be, and removed again on release if
    nothing was written there), held from :meth:`acquire` to :meth:`release`; a
    context manager."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.path = self.dir / LOCK_NAME
        self.fd: int | None = None
        self.created = False

    def acquire(self) -> "RunLock":
        self.created = not self.dir.exists()
        self.dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise RunInUse(
                    f"{self.dir} is in use by {holder} (lock {self.path}): one run per directory; wait for it to "
                    "finish, or give another --out"
                ) from None
            # the holder before us may have removed the file after we opened it: lock the file that is there
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # while locked: no one can have taken it
        os.close(self.fd)  # releases the flock
        self.fd = None
        if self.created and not any(self.dir.iterdir()):  # a run that failed to start leaves no trace
            self.dir.rmdir()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextmanager
def hold(run_dir: str | Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the ``with`` block. Under torchrun rank 0 holds it
    and every rank is refused together (none is left waiting for the others)."""
    lock, refusal = RunLock(run_dir), None
    if distributed.is_main():
        try:
            lock.acquire()
        except RunInUse as e:
            refusal = str(e)
    refusal = distributed.from_main(refusal)
    if refusal:
        raise RunInUse(refusal)
    try:
        yield
    finally:
        lock.release()
