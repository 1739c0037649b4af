"""Wavenet and Wavenet-dense: the deterministic baselines of paper 1 (section 4).

The same causal TCN trunk as STCN (``pyro_stcn.nets.trunk``), with no latent variables:

    d_{t-1} = TCN(x_{<t})
    x_t ~ p(x_t | d^L_{t-1})                      Wavenet
    x_t ~ p(x_t | [d^1_{t-1}, ..., d^L_{t-1}])    Wavenet-dense

Wavenet-dense feeds the output net all L feature levels, the deterministic analogue of
STCN-dense's [z^1_t, ..., z^L_t]. With no latents the ELBO is the exact log-likelihood.

Site: the observation ``x``, batch shape ``[batch, time]`` (batch plate dim -2, time
plate dim -1).

References:
    - [1] Aksan & Hilliges, "STCN: Stochastic Temporal Convolutional Networks", ICLR 2019.
    - [2] van den Oord et al., "WaveNet: A Generative Model for Raw Audio", 2016.
"""

from dataclasses import dataclass

import pyro
import torch
from torch import Tensor, nn

from pyro_stcn.inference.params import pyro_module
from pyro_stcn.nets.checks import check_batch
from pyro_stcn.nets.generation import Draw, draw_from, over_trunk, sample, sampler, start_sequences
from pyro_stcn.nets.masks import zero_padding
from pyro_stcn.nets.normalise import standardisation
from pyro_stcn.nets.observation import Observation
from pyro_stcn.nets.trunk import Wavenet


@dataclass
class WavenetConfig:
    """Sizes of a Wavenet baseline; those shared with :class:`~pyro_stcn.models.stcn.STCNConfig`
    mean the same there."""

    x_dim: int = 1
    likelihood: str = "bernoulli"
    dense: bool = False
    layers: int = 4  # L: groups of blocks, the feature levels d^1 .. d^L
    channels: int = 32
    blocks: int = 4  # K: blocks per group, dilations 1..2^(K-1)
    hidden: int = 32  # width of the output net
    output_layers: int = 2
    components: int = 20
    shift: list[float] | None = None
    scale: list[float] | None = None


class WavenetModel(nn.Module):
    """Wavenet (``dense=False``) or Wavenet-dense (``dense=True``); :meth:`model` is the
    Pyro model."""

    factor_steps = 1  # no latents: every step is its own factor, and the bound is exact (pyro_stcn.inference.factors)

    def __init__(self, config: WavenetConfig):
        super().__init__()
        self.config = c = config
        self.trunk = Wavenet(c.x_dim, c.channels, layers=c.layers, blocks=c.blocks)
        self.units = standardisation(c.x_dim, c.shift, c.scale)
        out_dim = c.channels * (c.layers if c.dense else 1)
        self.observe = Observation(out_dim, c.hidden, c.output_layers, c.likelihood, c.x_dim, c.components, self.units)

    def observation(self, d_prev: list[Tensor]) -> Tensor:
        """p(x_t | d_{t-1}) from the trunk's features, each ``[batch, time, channels]``."""
        return self.observe(self.output_input(d_prev))

    def output_input(self, d_prev: list[Tensor]) -> Tensor:
        """What the output net reads: [d^1, ..., d^L] (Wavenet-dense) or d^L."""
        return torch.cat(d_prev, dim=-1) if self.config.dense else d_prev[-1]

    def model(self, x: Tensor, mask: Tensor) -> None:
        """The generative model of ``x [batch, time, x_dim]`` under ``mask [batch, time]``."""
        pyro_module("wavenet", self)
        check_batch(x, mask, self.config.x_dim)
        d_prev = self.trunk(self.units.normalise(x), mask).d_prev
        batch, time = mask.shape
        with pyro.plate("batch", batch, dim=-2), pyro.plate("time", time, dim=-1):
            pyro.sample("x", self.observation(d_prev).mask(mask), obs=zero_padding(x, mask))

    @sampler
    def generate(
        self, num: int, steps: int, prime: Tensor | None = None, cached: bool = True, draw: Draw = sample
    ) -> Tensor:
        """Samples ``[num, steps, x_dim]``, continuing ``prime [num, K, x_dim]`` if given;
        as :meth:`models.stcn.STCN.generate`, with x_t drawn from p(x_t | d_{t-1})."""
        x, given = start_sequences(num, steps, self.config.x_dim, prime, like=next(self.parameters()))

        def emit(d_prev: list[Tensor]) -> Tensor:
            return draw_from(draw, "x", self.observe, self.output_input(d_prev))[:, 0]

        return over_trunk(self.trunk, self.units, x, given, cached, emit)
