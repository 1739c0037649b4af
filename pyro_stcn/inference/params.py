"""Registering nn.Modules with Pyro's param store."""

import pyro
from torch import nn


def pyro_module(name: str, module: nn.Module) -> None:
    """``pyro.module(name, module)``, where the module being run always wins.

    Plain ``pyro.module`` keeps whatever tensors the store already holds under a name,
    so after building a second model with the same name, SVI would silently keep
    training the first one. Here stale entries from another module are replaced.
    """
    store = pyro.get_param_store()
    for param_name, param in module.named_parameters():
        key = f"{name}$$${param_name}"
        if key in store and store[key] is not param:
            del store[key]
    pyro.module(name, module)
