"""Ancestral sampling from an autoregressive Pyro model, one step at a time.

At step t the model is run over the sequence generated so far, x_{<=t} with x_t a
placeholder; its latents at t depend only on x_{<t}, so the draw of the ``x`` site at
t is a draw from p(x_t | x_{<t}). This reruns the whole network at every step
(O(T²) work); it is the plain reference sampler.
"""

from collections.abc import Callable

import torch
from pyro import poutine
from torch import Tensor


@torch.no_grad()
def sample_sequences(model: Callable, num: int, steps: int, x_dim: int, device: torch.device | str = "cpu") -> Tensor:
    """``num`` sequences of ``steps`` steps from ``model(x, mask)``: ``[num, steps, x_dim]``."""
    x = torch.zeros(num, steps, x_dim, device=device)
    mask = torch.ones(num, steps, dtype=torch.bool, device=device)
    for t in range(steps):
        trace = poutine.trace(poutine.uncondition(model)).get_trace(x[:, : t + 1], mask[:, : t + 1])
        x[:, t] = trace.nodes["x"]["value"][:, t]
    return x
