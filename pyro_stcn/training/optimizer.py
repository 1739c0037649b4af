"""The optimiser of a run: Adam over the modules' parameters, in groups where a module
asks for its own learning rate, and the exponential decay of the rate.

A module asks by an ``lr_scales`` attribute, ``{submodule name: factor}``: that
submodule's parameters learn at ``factor`` times the run's rate (the IAF guides' flows
at a tenth: :mod:`pyro_stcn.guides.iaf`). Every other parameter is in the first group.
"""

from collections.abc import Iterable

import torch
from torch import nn


def param_groups(modules: Iterable[nn.Module], lr: float) -> list[dict]:
    """Adam's parameter groups: every parameter once, those of a module's ``lr_scales``
    submodules in groups of their own."""
    modules = list(modules)
    scaled, seen = [], set()
    for module in modules:
        for name, factor in getattr(module, "lr_scales", {}).items():
            params = [p for p in module.get_submodule(name).parameters() if id(p) not in seen]
            seen.update(id(p) for p in params)
            if params:
                scaled.append({"params": params, "lr": lr * factor})
    rest = []
    for p in (p for m in modules for p in m.parameters()):
        if id(p) not in seen:
            seen.add(id(p))
            rest.append(p)
    return [{"params": rest, "lr": lr}, *scaled]


def load_adam_state(optimizer: torch.optim.Adam, state: dict) -> None:
    """Load a saved Adam ``state`` into ``optimizer``, keeping the kernel it was built with:
    ``load_state_dict`` copies each saved group's settings, and a checkpoint written before
    Adam ran fused says ``fused=None``, which would quietly unfuse the resumed run. A fused
    step also wants each parameter's step count on that parameter's device as float32."""
    fused = [group["fused"] for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, was in zip(optimizer.param_groups, fused, strict=True):
        group["fused"] = was
        for p in group["params"] if was else []:
            if "step" in optimizer.state.get(p, {}):
                optimizer.state[p]["step"] = optimizer.state[p]["step"].to(p.device, torch.float32)


def adam(groups: list[dict], lr: float, decay: float, every: int):
    """Adam over ``groups`` and its schedule: every group's rate times decay^(step / every)."""
    # fused: one kernel per parameter, not a dozen (CPU and CUDA; the same update to float rounding)
    optimizer = torch.optim.Adam(groups, lr=lr, fused=True)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: decay ** (step / every))
