"""Swappable priors over the STCN latent hierarchy.

A prior is a module called as ``prior(layer, d_prev, z_above) -> (loc, scale)`` for
layer index ``layer`` (0 = bottom), with ``d_prev`` the trunk features that have seen
x_{<t} ``[batch, time, channels]`` and ``z_above`` the sample of the layer above
``[batch, time, z_dim]`` (None at the top). Write your own with the same signature.
"""

import torch
from torch import Tensor, nn

from pyro_stcn.choices import choose
from pyro_stcn.heads import join, layer_heads


class DynamicPrior(nn.Module):
    """The STCN prior (paper 1, eq. 8-10):

    p(z^L_t | d^L_{t-1}),   p(z^l_t | z^{l+1}_t, d^l_{t-1}) = N(μ^l_t, σ^l_t)
    """

    def __init__(self, channels: int, z_dims: list[int], hidden: int):
        super().__init__()
        self.heads = layer_heads(channels, z_dims, hidden)

    def forward(self, layer: int, d_prev: Tensor, z_above: Tensor | None) -> tuple[Tensor, Tensor]:
        return self.heads[layer](join(d_prev, z_above))


class StandardPrior(nn.Module):
    """p(z^l_t) = N(0, I) at every layer and step, as in a plain VAE."""

    def __init__(self, channels: int, z_dims: list[int], hidden: int):
        super().__init__()
        self.z_dims = z_dims

    def forward(self, layer: int, d_prev: Tensor, z_above: Tensor | None) -> tuple[Tensor, Tensor]:
        batch_shape = d_prev.shape[:-1] if z_above is None else z_above.shape[:-1]
        loc = d_prev.new_zeros(batch_shape + (self.z_dims[layer],))
        return loc, torch.ones_like(loc)


PRIORS = {"dynamic": DynamicPrior, "standard": StandardPrior}


def make_prior(name: str, channels: int, z_dims: list[int], hidden: int) -> nn.Module:
    """The prior called ``name`` (dynamic or standard)."""
    return choose(PRIORS, name, "prior")(channels, z_dims, hidden)
