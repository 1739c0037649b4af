"""Pyro generative models: STCN and STCN-dense, and their swappable priors."""

import dataclasses

from models.priors import PRIORS, DynamicPrior, StandardPrior
from models.stcn import STCN, STCNConfig
from pyro_stcn.choices import choose

MODELS = {"stcn": False, "stcn-dense": True}  # name -> dense


def make_model(name: str, config: STCNConfig) -> STCN:
    """STCN (``stcn``) or STCN-dense (``stcn-dense``) with the sizes in ``config``."""
    dense = choose(MODELS, name, "model")
    return STCN(dataclasses.replace(config, dense=dense))


__all__ = ["MODELS", "PRIORS", "STCN", "STCNConfig", "DynamicPrior", "StandardPrior", "make_model"]
