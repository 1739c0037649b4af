"""Pyro guides: the precision-weighted ladder, the independent posterior and the
inverse-autoregressive-flow posterior for STCN and MS-STCN, the VRNN's filtering
posterior, and the empty guide of the deterministic baselines. Which guide fits
which model is registered with each model family in :mod:`pyro_stcn.runs.families`;
build one with :func:`pyro_stcn.runs.registry.make_guide`."""

from pyro_stcn.guides.deterministic import NoLatentGuide
from pyro_stcn.guides.iaf import IAFGuide, MultiscaleIAFGuide
from pyro_stcn.guides.independent import IndependentGuide, MultiscaleIndependentGuide
from pyro_stcn.guides.ladder import LadderGuide, MultiscaleLadderGuide, precision_weighted
from pyro_stcn.guides.vrnn import VRNNGuide

__all__ = [
    "IAFGuide",
    "MultiscaleIAFGuide",
    "IndependentGuide",
    "LadderGuide",
    "MultiscaleIndependentGuide",
    "MultiscaleLadderGuide",
    "NoLatentGuide",
    "VRNNGuide",
    "precision_weighted",
]
