"""Small 1x1-conv nets that turn features into distribution parameters.

A 1x1 convolution over time is a linear map over channels applied at every step,
so on ``[batch, time, channels]`` tensors it is an ``nn.Linear`` (a
:class:`~pyro_stcn.nets.pointwise.ChannelLinear`, which reads transposed views of the
convolutions' ``[batch, channels, time]`` where they lie).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_stcn.nets.pointwise import ChannelLinear
from pyro_stcn.nets.precision import full_precision

SCALE_MIN = 1e-3
SCALE_MAX = 5.0


def bounded_softplus(raw: Tensor, low: float = SCALE_MIN, high: float = SCALE_MAX) -> Tensor:
    """σ = softplus(raw) clamped to [low, high]; used for every Gaussian scale."""
    return F.softplus(raw).clamp(low, high)


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 2) -> nn.Sequential:
    """``layers`` 1x1 convs with ReLU, then a 1x1 head."""
    dims = [in_dim] + [hidden] * layers
    body = [m for a, b in zip(dims[:-1], dims[1:], strict=True) for m in (ChannelLinear(a, b), nn.ReLU())]
    return nn.Sequential(*body, ChannelLinear(dims[-1], out_dim))


def join(d: Tensor, z_above: Tensor | None) -> Tensor:
    """[d, z_above] along channels; d ``[batch, time, C]`` is broadcast to the leading
    dims of z (e.g. a particle dim from ``vectorize_particles``)."""
    if z_above is None:
        return d
    return torch.cat([d.expand(*z_above.shape[:-1], -1), z_above], dim=-1)


def layer_heads(channels: int, z_dims: list[int], hidden: int) -> nn.ModuleList:
    """One :class:`GaussianHead` per latent layer, fed with [d^l, z^{l+1}] (the top
    layer with d^L alone)."""
    above = z_dims[1:] + [0]
    return nn.ModuleList(GaussianHead(channels + a, hidden, z) for z, a in zip(z_dims, above, strict=True))


class GaussianHead(nn.Module):
    """(μ, σ) of a diagonal Gaussian from ``[batch, time, in_dim]`` features.

    μ and σ come from separate nets, as in the authors' code: ``layers`` 1x1 convs with
    ReLU, then a 1x1 head (paper 1, appendix 6.1: two; MS-STCN: none, a 1x1 head alone).
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, layers: int = 2):
        super().__init__()
        self.loc = mlp(in_dim, hidden, out_dim, layers)
        self.scale = mlp(in_dim, hidden, out_dim, layers)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        loc, raw = full_precision(self.loc(h), self.scale(h))  # float32 under autocast (pyro_stcn.nets.precision)
        return loc, bounded_softplus(raw)
