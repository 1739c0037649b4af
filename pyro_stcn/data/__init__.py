"""Datasets as lists of ``[time, x_dim]`` sequences, and the batching they share."""

from pyro_stcn.data.batching import Splits, batches, pad_batch, shuffled_batches, split
from pyro_stcn.data.digits import load_digits_splits
from pyro_stcn.data.mnist import load_mnist_splits

__all__ = ["DATASETS", "Splits", "batches", "load_digits_splits", "pad_batch", "shuffled_batches", "split"]

DATASETS = {"digits": load_digits_splits, "mnist": load_mnist_splits}  # name -> () -> Splits
