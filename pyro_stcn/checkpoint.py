"""Checkpoints written atomically and read back with ``weights_only=True``.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts (state_dicts,
the optimizer's state, the step and the run's config), so it loads without
unpickling arbitrary objects.
"""

import os
from pathlib import Path

import torch


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` to ``path`` so that a crash leaves the old file or the new one,
    never half of one: write a temporary file beside it, sync, rename, sync the folder."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable pyro-stcn checkpoint: {e}") from e
