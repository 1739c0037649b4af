"""pyro-stcn: stochastic temporal convolutional networks in Pyro.

The package is split by role, lowest layer first (:mod:`pyro_stcn.architecture`):
networks (:mod:`pyro_stcn.nets`), inference (:mod:`pyro_stcn.inference`), the models and
guides (:mod:`pyro_stcn.models`, :mod:`pyro_stcn.guides`), training and evaluation
(:mod:`pyro_stcn.training`, :mod:`pyro_stcn.evaluation`), runs (:mod:`pyro_stcn.runs`:
the registry, presets, run configs and the run API) and the command line
(:mod:`pyro_stcn.cli`). The names below are imported on first use.
"""

import importlib

_HOMES = {
    "AnnealedELBO": "pyro_stcn.inference",
    "FreeBitsELBO": "pyro_stcn.inference",
    "ImportanceWeightedELBO": "pyro_stcn.inference",
    "LayerwiseELBO": "pyro_stcn.inference",
    "LinearFreeBitsELBO": "pyro_stcn.inference",
    "make_objective": "pyro_stcn.inference",
    "Features": "pyro_stcn.nets.trunk",
    "GatedBlock": "pyro_stcn.nets.trunk",
    "Wavenet": "pyro_stcn.nets.trunk",
    "Family": "pyro_stcn.runs.registry",
    "make_guide": "pyro_stcn.runs.registry",
    "make_model": "pyro_stcn.runs.registry",
    "register": "pyro_stcn.runs.registry",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'pyro_stcn' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
