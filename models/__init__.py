"""Pyro generative models: STCN and STCN-dense, MS-STCN, their swappable priors, and
the baselines Wavenet, Wavenet-dense, RNN and VRNN."""

import dataclasses

from pyro_stcn.models.ms_stcn import MSSTCN, MSSTCNConfig
from pyro_stcn.models.ms_stcn_layouts import MS_STCN_LAYOUTS
from pyro_stcn.models.priors import PRIORS, DynamicPrior, StandardPrior
from pyro_stcn.models.rnn import RNN, RNNConfig
from pyro_stcn.models.stcn import STCN, STCNConfig
from pyro_stcn.models.vrnn import VRNN, VRNNConfig
from pyro_stcn.models.wavenet import WavenetConfig, WavenetModel
from pyro_stcn.choices import choose

MODELS = {  # name -> its config, in the order of paper 1's tables
    "wavenet": WavenetConfig,
    "wavenet-dense": WavenetConfig,
    "rnn": RNNConfig,
    "vrnn": VRNNConfig,
    "stcn": STCNConfig,
    "stcn-dense": STCNConfig,
    "ms-stcn": MSSTCNConfig,
}
ModelConfig = STCNConfig | MSSTCNConfig | WavenetConfig | RNNConfig | VRNNConfig
Model = STCN | MSSTCN | WavenetModel | RNN | VRNN


def make_model(name: str, config: ModelConfig) -> Model:
    """The model called ``name`` (a key of :data:`MODELS`) from its config. The
    ``-dense`` variants share their plain variant's config, with ``dense`` set here."""
    config_class = choose(MODELS, name, "model")
    if not isinstance(config, config_class):
        raise ValueError(f"model {name!r} is built from an {config_class.__name__}, got {type(config).__name__}")
    if name in ("stcn", "stcn-dense"):
        return STCN(dataclasses.replace(config, dense=name == "stcn-dense"))
    if name in ("wavenet", "wavenet-dense"):
        return WavenetModel(dataclasses.replace(config, dense=name == "wavenet-dense"))
    return {"ms-stcn": MSSTCN, "rnn": RNN, "vrnn": VRNN}[name](config)


__all__ = [
    "MODELS",
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
    "make_model",
]
