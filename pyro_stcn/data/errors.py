"""The error every loader raises for bad input: what was wrong, where, and what was
expected."""

from pathlib import Path

import numpy as np


class DataError(ValueError):
    """Bad input data; the message names the file (and field or shape) at fault."""


def check_finite(values: np.ndarray, where: str | Path) -> np.ndarray:
    """``values`` if every entry is a number that is finite as float32 (the dtype the
    models use: 1e300 is finite as float64 but inf as float32), else a DataError naming
    the first bad one."""
    if not np.issubdtype(values.dtype, np.number) and values.dtype != bool:
        raise DataError(f"{where}: values of dtype {values.dtype}; expected numbers")
    with np.errstate(over="ignore"):
        bad = ~np.isfinite(values.astype(np.float32))
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"{where}: NaN or inf at index {index} as float32, the models' dtype ({float(values[index]):g} there; "
            f"{int(bad.sum())} such values; float32 reaches ±{np.finfo(np.float32).max:.3g}); data must be finite"
        )
    return values


def require_dir(path: str | Path, what: str) -> Path:
    """``path`` as a Path if it is a directory, else a DataError saying what was expected there."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: no such directory; expected {what}")
    return path
