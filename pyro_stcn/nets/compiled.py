"""Opt-in ``torch.compile`` of the networks (``train --compile``), never of Pyro's tracing.

Pyro's tracing runs Python per sample site (messengers, plates, trace bookkeeping),
which ``torch.compile`` would break into many graphs or recompile for every batch. So
what is compiled is each network module on its own, the ones that do the arithmetic:
every :class:`~pyro_stcn.nets.trunk.GatedBlock` and every
:class:`~pyro_stcn.nets.heads.GaussianHead` (``nn.Module.compile``, in place: the
parameters, the state dict and the checkpoints stay as they are). Compiled kernels sum
in another order, so losses agree with the uncompiled ones to float32 rounding
(``tests/test_compiled.py``).

Whether it pays depends on the machine. On this project's CPU it did not (the step took
1.09 and 1.02 times as long compiled: docs/guides/speed.md, ``bench steps --compile``);
it is meant for GPUs, where fusing the gates' elementwise work may save memory traffic,
and no GPU has measured it yet.

Where the platform cannot compile (no C++ compiler for inductor's CPU code, no Triton
for a GPU, a Python that dynamo does not support), :func:`compile_networks` leaves the
networks as they are and says why in one line (:func:`compile_problem`).
"""

import os
import shutil
import warnings

import torch
from torch import nn

from pyro_stcn.nets.heads import GaussianHead
from pyro_stcn.nets.trunk import GatedBlock

NETWORKS = (GatedBlock, GaussianHead)  # the module types compiled, each instance on its own
RECOMPILE_LIMIT = 64  # one compiled graph per distinct block shape; a deep model has dozens


def compile_problem(device: torch.device | str = "cpu") -> str | None:
    """Why ``torch.compile`` cannot work here for ``device``, in a few words; None if it can."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python version"
    if torch.device(device).type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "no Triton, which torch.compile needs for CUDA"
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None and shutil.which("clang++") is None:
        return f"no C++ compiler ({compiler} or clang++ on PATH), which torch.compile needs on the CPU"
    return None


def compile_networks(*modules: nn.Module, device: torch.device | str = "cpu") -> int:
    """Compile, in place, every :data:`NETWORKS` module inside ``modules``; returns how
    many. Where :func:`compile_problem` finds a reason, compiles nothing, warns with that
    reason (training goes on uncompiled) and returns 0."""
    problem = compile_problem(device)
    if problem is not None:
        warnings.warn(f"--compile: {problem}; the networks run uncompiled", RuntimeWarning, stacklevel=2)
        return 0
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    networks = {id(m): m for module in modules for m in module.modules() if isinstance(m, NETWORKS)}
    for network in networks.values():
        network.compile()
    return len(networks)
