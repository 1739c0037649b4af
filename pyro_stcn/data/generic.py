"""Generic data: an npz of variable-length sequences.

Layout: ``data`` holds all sequences one after another, ``[total_steps, x_dim]``, and
``lengths`` the length of each, ``[num_sequences]`` (summing to ``total_steps``). This
ragged layout needs no pickling: ``np.load(..., allow_pickle=False)`` reads it.

    np.savez("mine.npz", data=np.concatenate(seqs), lengths=[len(s) for s in seqs])
"""

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pyro_stcn.data.batching import Splits, split_held_out
from pyro_stcn.data.errors import DataError, check_finite


def load_npz_sequences(path: str | Path) -> list[Tensor]:
    """The sequences of an npz in the layout above, each ``[time_i, x_dim]`` float32."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; expected an npz with arrays 'data' and 'lengths'")
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: a single array; expected an npz with arrays 'data' and 'lengths'")
        with npz:
            missing = [k for k in ("data", "lengths") if k not in npz.files]
            if missing:
                raise DataError(f"{path}: no array {missing[0]!r}; expected 'data' and 'lengths', found {npz.files}")
            data, lengths = npz["data"], npz["lengths"]
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # random bytes, object arrays (pickles)
        # numpy's own text suggests allow_pickle: never for a file one did not write
        why = "it holds pickled Python objects, which are not loaded" if "pickle" in str(e) else str(e)
        raise DataError(f"{path}: not an npz of numeric arrays ({why}); expected arrays 'data' and 'lengths' "
                        "saved by numpy.savez") from None  # fmt: skip
    if not np.issubdtype(lengths.dtype, np.integer):
        raise DataError(f"{path}: 'lengths' has dtype {lengths.dtype}; expected integers (steps per sequence)")
    if not np.issubdtype(data.dtype, np.number) and data.dtype != bool:
        raise DataError(f"{path}: 'data' has dtype {data.dtype}; expected numbers")
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2:
        raise DataError(f"{path}: 'data' has shape {data.shape}; expected [total_steps, x_dim]")
    if lengths.ndim != 1 or (lengths < 1).any() or lengths.sum() != len(data):
        raise DataError(
            f"{path}: 'lengths' must be positive and sum to the {len(data)} rows of 'data'; "
            f"got shape {lengths.shape}, sum {int(lengths.sum())}"
        )
    check_finite(data, f"{path}, array 'data'")
    return [torch.as_tensor(s, dtype=torch.float32) for s in np.split(data, np.cumsum(lengths)[:-1])]


def load_npz_splits(directory: str | Path, seed: int = 0) -> Splits:
    """The sequences of the npz file ``directory`` (named so for ``--data-dir``; layout
    above) split 80/10/10 (seeded): binary values (piano rolls, say) for a Bernoulli
    likelihood, others for a Gaussian. Either way they are plain sequences, not images."""
    sequences = load_npz_sequences(directory)
    binary = all(bool(((s == 0) | (s == 1)).all()) for s in sequences)
    return split_held_out(sequences, "bernoulli" if binary else "gaussian", "sequence", seed)
