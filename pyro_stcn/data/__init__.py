"""Datasets as lists of ``[time, x_dim]`` sequences, and the batching they share."""

from pyro_stcn.data.batching import KINDS, Splits, batches, pad_batch, shuffled_batches, split
from pyro_stcn.data.deepwriting import load_deepwriting_splits
from pyro_stcn.data.digits import load_digits_splits
from pyro_stcn.data.generic import load_npz_splits
from pyro_stcn.data.iamondb import load_iamondb_splits
from pyro_stcn.data.lasa import load_lasa_splits
from pyro_stcn.data.mnist import load_mnist_idx_splits, load_mnist_splits
from pyro_stcn.data.speech import load_speech_splits
from pyro_stcn.data.wav import load_wav_splits

__all__ = [
    "DATASETS",
    "FORMATS",
    "KINDS",
    "OPTIONS",
    "Splits",
    "batches",
    "load_digits_splits",
    "pad_batch",
    "shuffled_batches",
    "split",
]

DATASETS = {  # name -> (**options) -> Splits: real data sets that ship inside a package
    "digits": load_digits_splits,
    "mnist": load_mnist_splits,
    "lasa": load_lasa_splits,
    "speech": load_speech_splits,
}
FORMATS = {  # name -> (directory, **options) -> Splits: the papers' formats, your files
    "iamondb": load_iamondb_splits,
    "deepwriting": load_deepwriting_splits,
    "wav": load_wav_splits,
    "mnist-idx": load_mnist_idx_splits,
    "npz": load_npz_splits,
}
OPTIONS = {  # the options each data set takes besides its name; the formats need a directory
    "mnist": {"binarise"},
    "speech": {"fw", "directory"},
    "lasa": {"directory"},
    "wav": {"fw", "directory"},
    "iamondb": {"directory", "dequantise", "split_lists"},
    "deepwriting": {"directory"},
    "mnist-idx": {"directory", "binarise"},
    "npz": {"directory"},
}
