"""The error every loader raises for bad input: what was wrong, where, and what was
expected."""

from pathlib import Path

import numpy as np


class DataError(ValueError):
    """Bad input data; the message names the file (and field or shape) at fault."""


def check_finite(values: np.ndarray, where: str | Path) -> np.ndarray:
    """``values`` if every entry is finite, else a DataError naming the first bad one."""
    bad = ~np.isfinite(values)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{where}: NaN or inf at index {index} ({int(bad.sum())} such values); data must be finite")
    return values


def require_dir(path: str | Path, what: str) -> Path:
    """``path`` as a Path if it is a directory, else a DataError saying what was expected there."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: no such directory; expected {what}")
    return path
