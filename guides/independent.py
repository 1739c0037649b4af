"""The independent posterior: q(z^l_t) from [d^l_t, z^{l+1}_t] alone.

    q(z^l_t | z^{l+1}_t, x_{<=t}) = N(μ̂^l_t, σ̂^l_t),   (μ̂, σ̂) = f^l([d_cur^l_t, z^{l+1}_t])

drawn top-down with the same sites, plates and masks as the model, so that every
KL between guide and model stays analytic (paper 1, eq. 13 and 15). This class also
holds the top-down loop that :class:`guides.ladder.LadderGuide` reuses.
"""

import pyro
import pyro.distributions as dist
from torch import Tensor, nn

from models.stcn import STCN
from pyro_stcn.heads import join, layer_heads
from pyro_stcn.params import register
from pyro_stcn.wavenet import Features


class IndependentGuide(nn.Module):
    """Posterior nets for every layer of ``stcn``; call it as ``guide(x, mask)``.

    The guide reads the model's trunk features (computed once per step and handed to
    the model) but does not own the model's parameters: its ``state_dict`` holds
    only the posterior nets.
    """

    def __init__(self, stcn: STCN):
        super().__init__()
        c = stcn.config
        self._stcn = (stcn,)  # a tuple keeps the model's parameters out of this module
        self.estimate = layer_heads(c.channels, c.z_dims, c.hidden)

    @property
    def stcn(self) -> STCN:
        return self._stcn[0]

    def posterior(self, layer: int, feats: Features, z_above: Tensor | None) -> tuple[Tensor, Tensor]:
        """(μ_q, σ_q) of q(z^l_t | ·), each ``[batch, time, z_l]``."""
        return self.estimate[layer](join(feats.d_cur[layer], z_above))

    def forward(self, x: Tensor, mask: Tensor) -> None:
        register("guide", self)
        feats = self.stcn.features.for_guide(x, mask)
        batch, time = mask.shape
        with pyro.plate("batch", batch, dim=-2), pyro.plate("time", time, dim=-1):
            z_above = None
            for layer in reversed(range(self.stcn.layers)):
                loc, scale = self.posterior(layer, feats, z_above)
                z_above = pyro.sample(f"z_{layer + 1}", dist.Normal(loc, scale).to_event(1).mask(mask))
