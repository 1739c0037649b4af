"""Checkpoints written atomically and read back with ``weights_only=True``.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts (state_dicts,
the optimizer's state, the step and the run's config), so it loads without
unpickling arbitrary objects.
"""

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch


def replace_atomically(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` with ``write(file)`` so that a crash leaves the old file or the new
    one, never half of one: write a temporary file beside it, sync, rename, sync the
    folder. A failed write (a full disk) removes its temporary file. Checkpoints, the
    log when it is cut back or migrated, and ``config.json`` when it changes are written so."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (:func:`replace_atomically`)."""
    replace_atomically(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; anything else (a file of
    other pickled objects, which could run code when loaded, or a damaged one) is
    refused in one line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's text goes on to suggest weights_only=False: never for a file one did not write
        found = next((line.strip() for line in str(e).splitlines() if "Unsupported" in line), "objects")
        raise ValueError(
            f"{path} is not a pyro-stcn checkpoint: it holds Python objects other than tensors and plain data "
            f"({found}), which are not loaded; expected a file written by pyro-stcn train"
        ) from None
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a readable pyro-stcn checkpoint ({first}); expected a file written by "
                         "pyro-stcn train") from None  # fmt: skip
