"""Pyro generative models: STCN and STCN-dense, MS-STCN, and their swappable priors."""

import dataclasses

from models.ms_stcn import MSSTCN, MSSTCNConfig
from models.ms_stcn_layouts import MS_STCN_LAYOUTS
from models.priors import PRIORS, DynamicPrior, StandardPrior
from models.stcn import STCN, STCNConfig
from pyro_stcn.choices import choose

MODELS = {"stcn": STCNConfig, "stcn-dense": STCNConfig, "ms-stcn": MSSTCNConfig}  # name -> its config


def make_model(name: str, config: STCNConfig | MSSTCNConfig) -> STCN | MSSTCN:
    """STCN (``stcn``), STCN-dense (``stcn-dense``) or MS-STCN (``ms-stcn``)."""
    config_class = choose(MODELS, name, "model")
    if not isinstance(config, config_class):
        raise ValueError(f"model {name!r} is built from an {config_class.__name__}, got {type(config).__name__}")
    if name == "ms-stcn":
        return MSSTCN(config)
    return STCN(dataclasses.replace(config, dense=name == "stcn-dense"))


__all__ = [
    "MODELS",
    "MS_STCN_LAYOUTS",
    "MSSTCN",
    "MSSTCNConfig",
    "PRIORS",
    "STCN",
    "STCNConfig",
    "DynamicPrior",
    "StandardPrior",
    "make_model",
]
