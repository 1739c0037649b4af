"""Pyro generative models: STCN and STCN-dense, MS-STCN, their swappable priors, and
the baselines Wavenet, Wavenet-dense, RNN and VRNN. Each family is registered by
name in :mod:`pyro_stcn.families`; build one with :func:`pyro_stcn.registry.make_model`."""

from models.ms_stcn import MSSTCN, MSSTCNConfig
from models.ms_stcn_layouts import MS_STCN_LAYOUTS
from models.priors import PRIORS, DynamicPrior, StandardPrior
from models.rnn import RNN, RNNConfig
from models.stcn import STCN, STCNConfig
from models.vrnn import VRNN, VRNNConfig
from models.wavenet import WavenetConfig, WavenetModel

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
    "StandardPrior",
]
