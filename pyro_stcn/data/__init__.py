"""Datasets as lists of ``[time, x_dim]`` sequences, and the batching they share."""

from pyro_stcn.data.batching import Splits, batches, pad_batch, shuffled_batches, split
from pyro_stcn.data.digits import load_digits_splits
from pyro_stcn.data.lasa import load_lasa_splits
from pyro_stcn.data.mnist import load_mnist_splits
from pyro_stcn.data.speech import load_speech_splits

__all__ = ["DATASETS", "Splits", "batches", "load_digits_splits", "pad_batch", "shuffled_batches", "split"]

DATASETS = {  # name -> () -> Splits, each a real data set that ships inside a package
    "digits": load_digits_splits,
    "mnist": load_mnist_splits,
    "lasa": load_lasa_splits,
    "speech": load_speech_splits,
}
