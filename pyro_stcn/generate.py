"""Ancestral sampling from an autoregressive Pyro model, one step at a time.

The models' own ``generate`` methods are the fast samplers (cached, O(1) network work
per step); :func:`sample_sequences` below is the plain reference that works with any
model function.

At step t the model is run over the sequence generated so far, x_{<=t} with x_t a
placeholder; its latents at t depend only on x_{<t}, so the draw of the ``x`` site at
t is a draw from p(x_t | x_{<t}, z). Latents already drawn at earlier steps are kept:
in a multiscale model one coarse z covers several fine steps, and all of them must
see the same draw. This reruns the whole network at every step (O(T²) work); it is
the plain reference sampler.
"""

from collections.abc import Callable

import torch
from pyro import poutine
from pyro.distributions import Distribution
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import Tensor

Draw = Callable[[str, Distribution], Tensor]  # (site name, distribution) -> its value


def sample(name: str, distribution: Distribution) -> Tensor:
    """The default :data:`Draw`: a fresh sample."""
    return distribution.sample()


class _KeepEarlier(Messenger):
    """Put back the previous pass's latent draws at every latent step that began
    before fine step ``t``. ``previous`` maps a site to its value ``[..., T_l, z]`` and
    the number of fine steps each of its steps covers."""

    def __init__(self, previous: dict[str, tuple[Tensor, int]], t: int):
        super().__init__()
        self.previous, self.t = previous, t

    def _pyro_post_sample(self, msg):
        if msg["name"] not in self.previous:
            return
        old, covers = self.previous[msg["name"]]
        began = -(-self.t // covers)  # latent steps whose first fine step is before t
        value = msg["value"].clone()
        value[..., :began, :] = old[..., :began, :]
        msg["value"] = value


@torch.no_grad()
def sample_sequences(model: Callable, num: int, steps: int, x_dim: int, device: torch.device | str = "cpu") -> Tensor:
    """``num`` sequences of ``steps`` steps from ``model(x, mask)``: ``[num, steps, x_dim]``."""
    x = torch.zeros(num, steps, x_dim, device=device)
    mask = torch.ones(num, steps, dtype=torch.bool, device=device)
    latents: dict[str, tuple[Tensor, int]] = {}
    for t in range(steps):
        with _KeepEarlier(latents, t):
            trace = poutine.trace(poutine.uncondition(model)).get_trace(x[:, : t + 1], mask[:, : t + 1])
        fine = trace.nodes["x"]["value"]  # the model may pad the sequence: [num, T_pad, x_dim]
        x[:, t] = fine[:, t]
        latents = {
            name: (site["value"], fine.shape[-2] // site["value"].shape[-2])
            for name, site in trace.nodes.items()
            if site["type"] == "sample" and name != "x" and not site_is_subsample(site)
        }
    return x
