"""MNIST's IDX files (LeCun et al.): a big-endian header, then raw values.

Header: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions n,
then n big-endian 32-bit sizes. ``train-images-idx3-ubyte`` is 0x00000803 with sizes
[N, 28, 28]; labels are 0x00000801 with [N].
"""

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from pyro_stcn.data.errors import DataError

UBYTE = 0x08


def read_idx(path: str | Path) -> np.ndarray:
    """The array in an IDX file (optionally gzipped), as uint8 with its header's shape."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; expected an IDX file such as train-images-idx3-ubyte")
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # a damaged .gz
        raise DataError(f"{path}: cannot be read ({e}); expected an IDX file, gzipped if it ends in .gz") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != UBYTE:
        magic = raw[:4].hex() if len(raw) >= 4 else raw.hex()
        raise DataError(f"{path}: magic number 0x{magic} is not IDX unsigned-byte data (expected 0x000008NN)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header ({len(raw)} bytes; {ndim} dimensions need {header})")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(f"{path}: {len(raw) - header} data bytes, but the header's shape {shape} needs {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
