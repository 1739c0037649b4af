"""Registering nn.Modules with Pyro's param store, loudly when names clash."""

import pyro
from torch import nn


def register(name: str, module: nn.Module) -> None:
    """``pyro.module(name, module)``, refusing a store that already holds another
    module's parameters under ``name``: Pyro would hand SVI those stale tensors and
    silently train nothing."""
    pyro.module(name, module)
    store = pyro.get_param_store()
    for param_name, param in module.named_parameters():
        if store[f"{name}$$${param_name}"] is not param:
            raise RuntimeError(
                f"Pyro's param store already holds a parameter {name}$$${param_name} that "
                "belongs to another module; call pyro.clear_param_store() before building a new model"
            )
