"""The model registry: one entry per model family.

A :class:`Family` holds everything the command line, ``compare``, the presets and the
run API (:mod:`pyro_stcn.runs.api`) know about a kind of model: its model names and the
names tables print, its config class and default sizes, the network flags it takes,
its guides and default guide. Nothing else in the library keys a table on a model
name, so a model of your own is one file and one :func:`register` call::

    from pyro_stcn.runs.registry import Family, register

    register(Family(
        models={"my-model": "My model"}, model=MyModel, config=MyConfig, defaults=MyConfig(hidden=32),
        guides={"mine": MyGuide}, default_guide="mine", flags={"hidden"},
    ))

after which ``run.py train --model my-model`` (in the same process), ``compare``,
``evaluate`` and ``sample`` know it. The built-in families are registered by
:mod:`pyro_stcn.runs.families`, which the package :mod:`pyro_stcn.runs` imports first.

A model class provides ``model(x, mask)`` (the Pyro model) and ``generate(num, steps,
prime)``, and may say what its latents factorise over given x: ``factor_steps``, the
number of consecutive steps whose latents (in the model and in each of its guides) form
one factor independent of the others (STCN 1, MS-STCN its total stride), or None where
they do not factorise (VRNN; the default for a model without it). ``evaluate --iw K``
and ``--objective iwae`` then weight each factor on its own (:mod:`pyro_stcn.inference.factors`).
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

# What every model's config takes from the data rather than from flags.
FROM_DATA = ("x_dim", "likelihood", "shift", "scale")
# The network flags a family may take (argparse dests of ``run.py train``).
NETWORK_FLAGS = ("prior", "channels", "blocks", "layers", "hidden", "z_dims", "layout", "strides", "components")
NETWORK_FLAGS += ("output_layers", "deterministic")


@dataclass
class Family:
    """A model family: models that share a config class, flags and guides.

    ``model`` is the module class of its models, built as ``model(config)``, or by
    ``build(name, config)`` where the name changes the config (STCN-dense, say);
    ``guides`` maps a guide name to a class called as ``Guide(model)``.
    ``flags`` are the network flags the family takes (argparse dests such as
    ``"z_dims"``), ``per_layer`` those of them that take one value per layer; any
    other list-valued flag takes one value. Families whose sizes mean the same things
    name the same ``sizes`` vocabulary: a preset's network sizes carry over between
    them. ``compared``: among ``run.py compare``'s default models.

    Subclass and override :meth:`configure` where flags do not map one to one onto
    config fields (MS-STCN's layouts, say), or :meth:`sizes_from_preset` to adapt a
    preset made for another family of the same vocabulary.
    """

    models: dict[str, str]  # model name -> the name tables print, in table order
    model: type
    config: type
    defaults: Any  # a ``config`` instance: the sizes of the default run
    guides: dict[str, Callable[[nn.Module], nn.Module]]
    default_guide: str
    build: Callable[[str, Any], nn.Module] | None = None
    flags: frozenset[str] = field(default_factory=frozenset)
    per_layer: frozenset[str] = field(default_factory=frozenset)
    sizes: str | None = None
    compared: bool = True

    def __post_init__(self):
        self.flags, self.per_layer = frozenset(self.flags), frozenset(self.per_layer)
        if self.default_guide not in self.guides:
            raise ValueError(f"default guide {self.default_guide!r} is not among the guides {list(self.guides)}")
        if not self.flags <= set(NETWORK_FLAGS):
            raise ValueError(f"unknown network flags {sorted(self.flags - set(NETWORK_FLAGS))}; valid: {NETWORK_FLAGS}")
        if not self.per_layer <= self.flags:
            raise ValueError(f"per-layer flags {sorted(self.per_layer - self.flags)} are not among the flags")

    def configure(self, name: str, sizes: dict, data: dict) -> Any:
        """The config of model ``name`` from the network flags given (``sizes``, already
        checked: one value for the flags not in ``per_layer``) and the data's settings
        (``data``: the keys of ``FROM_DATA``)."""
        return dataclasses.replace(self.defaults, **sizes, **data)

    def sizes_from_preset(self, sizes: dict) -> dict:
        """The network sizes this family takes from a preset made for another family of
        the same ``sizes`` vocabulary: those of its flags."""
        return {k: v for k, v in sizes.items() if k in self.flags}


FAMILIES: list[Family] = []  # the built-ins (pyro_stcn.runs.families, imported with pyro_stcn.runs) first


def families() -> list[Family]:
    """Every registered family, the built-in ones first."""
    return FAMILIES


def register(family: Family) -> Family:
    """Add ``family``; its model names must be new."""
    taken = [name for name in family.models if any(name in f.models for f in FAMILIES)]
    if taken:
        raise ValueError(f"model name {taken[0]!r} is registered already")
    FAMILIES.append(family)
    return family


def family_of(model: str) -> Family:
    """The family of the model called ``model``; a ValueError lists the valid names."""
    for family in families():
        if model in family.models:
            return family
    raise ValueError(f"unknown model {model!r}; valid: {', '.join(model_names())}")


def model_names() -> list[str]:
    """Every registered model, in table order."""
    return [name for family in families() for name in family.models]


def guide_names() -> list[str]:
    """Every guide name of every family, each once."""
    return list(dict.fromkeys(g for family in families() for g in family.guides))


def printed_name(model: str) -> str:
    """The name tables print for ``model``."""
    return family_of(model).models[model]


def make_model(name: str, config: Any) -> nn.Module:
    """The model called ``name`` from its config (an instance of its family's config class)."""
    family = family_of(name)
    if not isinstance(config, family.config):
        raise ValueError(f"model {name!r} is built from a {family.config.__name__}, got {type(config).__name__}")
    return family.build(name, config) if family.build else family.model(config)


def make_guide(name: str, model: nn.Module) -> nn.Module:
    """The guide called ``name`` for ``model``; a clear error if it does not fit it."""
    family = next((f for f in reversed(families()) if isinstance(model, f.model)), None)  # the latest: subclasses
    if family is None:
        raise ValueError(f"no registered family builds a {type(model).__name__}")
    if name in family.guides:
        return family.guides[name](model)
    if name in guide_names():
        raise ValueError(f"guide {name!r} does not fit a {type(model).__name__}; it takes {' or '.join(family.guides)}")
    raise ValueError(f"unknown guide {name!r}; valid: {', '.join(family.guides)}")


def default_guide(model: str) -> str:
    """The guide the model called ``model`` gets unless one is chosen."""
    return family_of(model).default_guide
