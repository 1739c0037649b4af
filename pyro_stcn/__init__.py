"""pyro-stcn: stochastic temporal convolutional networks in Pyro.

The library core: the causal TCN trunk, likelihoods, ELBOs, schedules, data,
training, evaluation, generation and plots. The models (``pyro_stcn.models``) and
guides (``pyro_stcn.guides``) build on it; the registry of model families
(:mod:`pyro_stcn.runs.registry`, filled by :mod:`pyro_stcn.runs.families`), the run API
(:mod:`pyro_stcn.runs.api`) and the command line (:mod:`pyro_stcn.cli.commands`) sit on top.
"""

from pyro_stcn.inference import (
    AnnealedELBO,
    FreeBitsELBO,
    LayerwiseELBO,
    LinearFreeBitsELBO,
    make_objective,
)
from pyro_stcn.nets.trunk import Features, GatedBlock, Wavenet
from pyro_stcn.runs.registry import Family, make_guide, make_model, register

__all__ = [
    "AnnealedELBO",
    "Family",
    "Features",
    "FreeBitsELBO",
    "GatedBlock",
    "LayerwiseELBO",
    "LinearFreeBitsELBO",
    "Wavenet",
    "make_guide",
    "make_model",
    "make_objective",
    "register",
]
