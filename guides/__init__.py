"""Pyro guides: the precision-weighted ladder and the independent posterior for STCN
and MS-STCN, the VRNN's filtering posterior, and the empty guide of the deterministic
baselines."""

from torch import nn

from pyro_stcn.guides.deterministic import NoLatentGuide
from pyro_stcn.guides.independent import IndependentGuide, MultiscaleIndependentGuide
from pyro_stcn.guides.ladder import LadderGuide, MultiscaleLadderGuide, precision_weighted
from pyro_stcn.guides.vrnn import VRNNGuide
from pyro_stcn.models import MODELS, RNN, STCN, VRNN, WavenetModel
from pyro_stcn.models.ms_stcn import MSSTCN
from pyro_stcn.choices import choose

GUIDES = {  # name -> {model class: its guide of that name}
    "ladder": {STCN: LadderGuide, MSSTCN: MultiscaleLadderGuide},
    "independent": {STCN: IndependentGuide, MSSTCN: MultiscaleIndependentGuide},
    "vrnn": {VRNN: VRNNGuide},
    "none": {WavenetModel: NoLatentGuide, RNN: NoLatentGuide},
}
DEFAULT_GUIDES = {"wavenet": "none", "wavenet-dense": "none", "rnn": "none", "vrnn": "vrnn"}  # others: ladder


def default_guide(model: str) -> str:
    """The guide a model called ``model`` gets unless one is chosen."""
    choose(MODELS, model, "model")
    return DEFAULT_GUIDES.get(model, "ladder")


def make_guide(name: str, model: nn.Module) -> nn.Module:
    """The guide called ``name`` for ``model``; a clear error if it does not fit it."""
    for model_class, guide_class in choose(GUIDES, name, "guide").items():
        if isinstance(model, model_class):
            return guide_class(model)
    fitting = [n for n, by_model in GUIDES.items() if any(isinstance(model, m) for m in by_model)]
    raise ValueError(f"guide {name!r} does not fit a {type(model).__name__}; it takes {' or '.join(fitting)}")


__all__ = [
    "DEFAULT_GUIDES",
    "GUIDES",
    "IndependentGuide",
    "LadderGuide",
    "MultiscaleIndependentGuide",
    "MultiscaleLadderGuide",
    "NoLatentGuide",
    "VRNNGuide",
    "default_guide",
    "make_guide",
    "precision_weighted",
]
