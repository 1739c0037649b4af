"""Normalising inputs inside the model while scoring in data units.

The networks see x̃ = (x - shift) / scale, per channel, with shift and scale fitted on
the training split only. The model's predictive distribution p̃ is over x̃; mapped back
through x = shift + scale · x̃ it becomes

    log p(x) = log p̃((x - shift) / scale) - Σ_d log scale_d

(the change-of-variables Jacobian), so every reported log-likelihood is in the data's own
units, as the papers' tables are.

What is fitted depends on the likelihood:

- gaussian, gmm: each channel's mean and standard deviation;
- handwriting: (dx, dy) divided by one global standard deviation of the offsets, as the
  papers do, and the pen bit left alone;
- bernoulli: nothing (binary data stays binary).
"""

from dataclasses import dataclass

import torch
from pyro import distributions as dist
from torch import Tensor

MIN_SCALE = 1e-6  # a constant channel keeps scale 1 rather than dividing by zero


@dataclass
class Standardisation:
    """Per-channel shift and scale; the identity has shift 0 and scale 1."""

    shift: list[float]
    scale: list[float]

    @classmethod
    def identity(cls, x_dim: int) -> "Standardisation":
        return cls([0.0] * x_dim, [1.0] * x_dim)

    @classmethod
    def fit(cls, train: list[Tensor], likelihood: str) -> "Standardisation":
        """The statistics ``likelihood`` calls for, from the training sequences."""
        x = torch.cat(list(train)).double()  # [all training steps, x_dim]
        x_dim = x.shape[-1]
        if likelihood in ("gaussian", "gmm"):
            std = x.std(0)
            return cls(x.mean(0).tolist(), torch.where(std > MIN_SCALE, std, 1.0).tolist())
        if likelihood == "handwriting":
            std = float(x[:, :2].std())
            std = std if std > MIN_SCALE else 1.0
            return cls([0.0] * x_dim, [std, std] + [1.0] * (x_dim - 2))
        return cls.identity(x_dim)

    @property
    def is_identity(self) -> bool:
        return all(s == 0 for s in self.shift) and all(s == 1 for s in self.scale)

    def normalise(self, x: Tensor) -> Tensor:
        """x̃ = (x - shift) / scale, for ``x [..., x_dim]``."""
        if self.is_identity:
            return x
        return (x - x.new_tensor(self.shift)) / x.new_tensor(self.scale)

    def to_data(self, x: Tensor) -> Tensor:
        """x = shift + scale · x̃, for a draw ``x [..., x_dim]`` in the model's units
        (the numbers of :meth:`to_data_units`' transform)."""
        if self.is_identity:
            return x
        return x.new_tensor(self.shift) + x.new_tensor(self.scale) * x

    def to_data_units(self, p: dist.TorchDistribution, like: Tensor) -> dist.TorchDistribution:
        """p̃ over x̃ mapped to a distribution over x (event dim 1), Jacobian included."""
        if self.is_identity:
            return p
        affine = dist.transforms.AffineTransform(like.new_tensor(self.shift), like.new_tensor(self.scale), event_dim=1)
        return dist.TransformedDistribution(p, affine)


def standardisation(x_dim: int, shift: list[float] | None, scale: list[float] | None) -> Standardisation:
    """A model's standardisation from its config (None: the identity), checked for size."""
    result = Standardisation(shift or [0.0] * x_dim, scale or [1.0] * x_dim)
    if len(result.shift) != x_dim or len(result.scale) != x_dim or min(result.scale) <= 0:
        raise ValueError(f"shift and scale need {x_dim} values each, scales positive; got {shift} and {scale}")
    return result
