"""Pyro guides for STCN and MS-STCN: the precision-weighted ladder and the independent posterior."""

from torch import nn

from guides.independent import IndependentGuide, MultiscaleIndependentGuide
from guides.ladder import LadderGuide, MultiscaleLadderGuide, precision_weighted
from models.ms_stcn import MSSTCN
from pyro_stcn.choices import choose

GUIDES = {  # name -> (guide for STCN, guide for MS-STCN)
    "ladder": (LadderGuide, MultiscaleLadderGuide),
    "independent": (IndependentGuide, MultiscaleIndependentGuide),
}


def make_guide(name: str, model: nn.Module) -> nn.Module:
    """The guide called ``name`` (ladder or independent) for an STCN or an MS-STCN."""
    for_stcn, for_ms_stcn = choose(GUIDES, name, "guide")
    return for_ms_stcn(model) if isinstance(model, MSSTCN) else for_stcn(model)


__all__ = [
    "GUIDES",
    "IndependentGuide",
    "LadderGuide",
    "MultiscaleIndependentGuide",
    "MultiscaleLadderGuide",
    "make_guide",
    "precision_weighted",
]
