"""Mixed precision, opt in: the networks in bfloat16, every density in float32.

Under :func:`network_autocast` the convolutions and linear maps of the trunk and
heads run in bfloat16 (``torch.autocast``), while what turns their outputs into
numbers of the objective stays in float32: the Gaussian heads return (μ, σ) as
float32 (:class:`pyro_stcn.nets.heads.GaussianHead`), and the observation's likelihood
head runs outside autocast on float32 features (:class:`pyro_stcn.nets.observation.Observation`).
So every log-density, every KL and the loss are float32. Outside the context these
casts are no-ops: float32 training computes exactly what it did before.

On a CPU, autocast to bfloat16 works (and is tested) but is rarely faster; it is
meant for GPUs with bfloat16 tensor cores.
"""

import contextlib

import torch
from torch import Tensor


def network_autocast(device: torch.device | str, enabled: bool = True) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to bfloat16 on ``device``'s type, or a null context."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def full_precision(*tensors: Tensor) -> tuple[Tensor, ...]:
    """The tensors as float32 where autocast made them narrower (a no-op otherwise)."""
    return tuple(t.float() if t.is_floating_point() and t.dtype != torch.float32 and t.dtype != torch.float64 else t
                 for t in tensors)  # fmt: skip


def without_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast switched off (inside :func:`network_autocast`), for float32 densities."""
    return torch.autocast(device_type, enabled=False)
