"""Pyro generative models: STCN and STCN-dense, MS-STCN, their swappable priors, and
the baselines Wavenet, Wavenet-dense, RNN and VRNN. Each family is registered by
name in :mod:`pyro_stcn.runs.families`; build one with :func:`pyro_stcn.runs.registry.make_model`."""

from pyro_stcn.models.ms_stcn import MSSTCN, MSSTCNConfig
from pyro_stcn.models.ms_stcn_layouts import MS_STCN_LAYOUTS
from pyro_stcn.models.priors import PRIORS, DynamicPrior, GaussianPrior, MixturePrior, StandardPrior
from pyro_stcn.models.rnn import RNN, RNNConfig
from pyro_stcn.models.stcn import STCN, STCNConfig
from pyro_stcn.models.vrnn import VRNN, VRNNConfig
from pyro_stcn.models.wavenet import WavenetConfig, WavenetModel

__all__ = [
    "MS_STCN_LAYOUTS",
    "MSSTCN",
    "MSSTCNConfig",
    "PRIORS",
    "RNN",
    "RNNConfig",
    "STCN",
    "STCNConfig",
    "VRNN",
    "VRNNConfig",
    "WavenetConfig",
    "WavenetModel",
    "DynamicPrior",
    "GaussianPrior",
    "MixturePrior",
    "StandardPrior",
]
