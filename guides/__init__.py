"""Pyro guides for STCN: the precision-weighted ladder and the independent posterior."""

from guides.independent import IndependentGuide
from guides.ladder import LadderGuide, precision_weighted
from models.stcn import STCN
from pyro_stcn.choices import choose

GUIDES = {"ladder": LadderGuide, "independent": IndependentGuide}


def make_guide(name: str, model: STCN) -> IndependentGuide:
    """The guide called ``name`` (ladder or independent) for ``model``."""
    return choose(GUIDES, name, "guide")(model)


__all__ = ["GUIDES", "IndependentGuide", "LadderGuide", "make_guide", "precision_weighted"]
