"""Deepwriting (Aksan et al. 2018): IAM-OnDB-derived handwriting as npz files.

``deepwriting_training.npz`` and ``deepwriting_validation.npz`` each hold ``strokes``,
an object array of ``[points, 3]`` float arrays (dx, dy, pen), alongside labels this
project does not use. The pen bit is 1 where the pen lifts. Object arrays are pickles,
so ``strokes`` is read with an unpickler that accepts numpy arrays only.

Splits: the training file gives train and (a seeded 10%) validation; the validation
file is the test set, on which paper 1 reports log-likelihood per time step.
"""

import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pyro_stcn.data.batching import Splits, held_out
from pyro_stcn.data.errors import DataError, check_finite, require_dir
from pyro_stcn.data.safe_pickle import ArraysOnly

FILES = ("deepwriting_training.npz", "deepwriting_validation.npz")


def read_deepwriting_strokes(path: str | Path) -> list[Tensor]:
    """The ``strokes`` of one Deepwriting npz, each ``[points, 3]`` (dx, dy, pen)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as npz:
            if "strokes.npy" not in npz.namelist():
                found = [n.removesuffix(".npy") for n in npz.namelist()]
                raise DataError(f"{path}: no array 'strokes'; found {found}")
            with npz.open("strokes.npy") as f:
                major, _ = np.lib.format.read_magic(f)
                read_header = {1: np.lib.format.read_array_header_1_0, 2: np.lib.format.read_array_header_2_0}
                shape, fortran, dtype = read_header[major](f)
                if dtype.hasobject:  # one pickle of arrays follows the header
                    strokes = ArraysOnly(f, encoding="latin1").load()
                else:
                    count = int(np.prod(shape))
                    strokes = np.frombuffer(f.read(), dtype=dtype, count=count).reshape(
                        shape, order="F" if fortran else "C"
                    )
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, pickle.UnpicklingError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: not a readable npz ({e})") from e
    sequences = []
    for i, s in enumerate(strokes):
        s = np.asarray(s, dtype=np.float32)
        if s.ndim != 2 or s.shape[1] != 3 or len(s) == 0:
            raise DataError(f"{path}: strokes[{i}] has shape {s.shape}; expected [points, 3] (dx, dy, pen)")
        sequences.append(torch.from_numpy(check_finite(s, f"{path}, strokes[{i}]")))
    return sequences


def load_deepwriting_splits(directory: str | Path, seed: int = 0) -> Splits:
    """Train/valid from the training file, test from the validation file."""
    directory = require_dir(directory, f"the Deepwriting files {FILES[0]} and {FILES[1]}")
    missing = [name for name in FILES if not (directory / name).is_file()]
    if missing:
        raise DataError(f"{directory}: no {missing[0]}")
    train_file, test = (read_deepwriting_strokes(directory / name) for name in FILES)
    train, valid, rest = held_out(len(train_file), 0.1, seed)
    train = sorted(train + rest)  # no test part here: the validation file is the test set
    return Splits(
        [train_file[i] for i in train], [train_file[i] for i in valid], test, likelihood="handwriting", kind="strokes"
    )
