"""pyro-stcn: stochastic temporal convolutional networks in Pyro.

The library core: the causal TCN trunk, likelihoods, ELBOs, schedules, data,
training, evaluation, generation and plots. It never imports ``models`` or
``guides``; those build on it.
"""

from pyro_stcn.elbo import (
    AnnealedELBO,
    FreeBitsELBO,
    LayerwiseELBO,
    LinearFreeBitsELBO,
    make_objective,
)
from pyro_stcn.wavenet import Features, GatedBlock, Wavenet

__all__ = [
    "AnnealedELBO",
    "Features",
    "FreeBitsELBO",
    "GatedBlock",
    "LayerwiseELBO",
    "LinearFreeBitsELBO",
    "Wavenet",
    "make_objective",
]
