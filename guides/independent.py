"""The independent posterior: q(z^l_t) from [d^l_t, z^{l+1}_t] alone.

    q(z^l_t | z^{l+1}_t, x_{<=t}) = N(μ̂^l_t, σ̂^l_t),   (μ̂, σ̂) = f^l([d_cur^l_t, z^{l+1}_t])

drawn top-down with the same sites, plates and masks as the model, so that every
KL between guide and model stays analytic (paper 1, eq. 13 and 15). This class also
holds the top-down loop that :class:`guides.ladder.LadderGuide` reuses.

For MS-STCN (paper 2, eq. 10), :class:`MultiscaleIndependentGuide` runs the model's own
top-down pass, drawing each z^l from

    q(z^l | ·) = N(Conv1x1([h^l, d^l]))    with d^l *not* delayed,

and hands that pass to the model, so the shared networks run once per step. With no
latent variables (the deterministic control) it draws nothing.
"""

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from pyro_stcn.models.ms_stcn import MSSTCN, MSFeatures
from pyro_stcn.models.stcn import STCN
from pyro_stcn.heads import GaussianHead, join, layer_heads
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


class MultiscaleIndependentGuide(nn.Module):
    """q(z^l) from [h^l, d^l] by a 1x1 head per layer; call it as ``guide(x, mask)``.

    Like the STCN guides it shares, but does not own, the model's networks.
    """

    def __init__(self, ms_stcn: MSSTCN):
        super().__init__()
        self._ms_stcn = (ms_stcn,)  # a tuple keeps the model's parameters out of this module
        c = ms_stcn.config
        heads = zip(c.channels, c.z_dims) if c.latent else []
        self.estimate = nn.ModuleList(GaussianHead(2 * ch, ch, z, layers=0) for ch, z in heads)

    @property
    def ms_stcn(self) -> MSSTCN:
        return self._ms_stcn[0]

    def posterior(self, layer: int, h: Tensor, feats: MSFeatures) -> tuple[Tensor, Tensor]:
        """(μ_q, σ_q) of q(z^l), each ``[batch, T_l, z_l]``; ``h`` is ``[batch, T_l, C_l]``."""
        return self.estimate[layer](torch.cat([h, feats.d[layer].transpose(-1, -2)], dim=-1))

    def forward(self, x: Tensor, mask: Tensor) -> None:
        register("ms_stcn_guide", self)
        model = self.ms_stcn
        feats = model.features.for_guide(x, mask)
        batch_plate, _, time_plates = model.plates(feats)

        def sample(layer: int, h: Tensor) -> Tensor | None:
            if not model.config.latent:
                return None
            loc, scale = self.posterior(layer, h, feats)
            with batch_plate, time_plates[layer]:
                q = dist.Normal(loc, scale).to_event(1).mask(feats.masks[layer])
                return pyro.sample(f"z_{layer + 1}", q)

        feats.top_down = model.top_down(feats, sample)  # the model reuses this pass
