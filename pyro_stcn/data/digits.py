"""The default dataset: binarised UCI handwritten digits as 64-step sequences.

scikit-learn ships the 1797 8x8 images of ``load_digits`` (pixel values 0-16). A
pixel is 1 when its value is at least 8. Each image is read in raster order, one
pixel per step: x has shape ``[64, 1]``. The split is fixed: 1297 train, 250
validation, 250 test.
"""

import torch

from pyro_stcn.data.batching import Splits, split

SIDE = 8
VALID, TEST = 250, 250


def load_digits_splits(seed: int = 0) -> Splits:
    """Binarised digits as Bernoulli sequences ``[64, 1]``, split train/valid/test."""
    from sklearn.datasets import load_digits

    images = torch.as_tensor(load_digits().images, dtype=torch.float32)
    binary = (images >= 8).float().reshape(len(images), SIDE * SIDE, 1)
    return split(list(binary), VALID, TEST, likelihood="bernoulli", kind="image", seed=seed)
