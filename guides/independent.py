"""The independent posterior: q(z^l_t) from [d^l_t, z^{l+1}_t] alone.

    q(z^l_t | z^{l+1}_t, x_{<=t}) = N(μ̂^l_t, σ̂^l_t),   (μ̂, σ̂) = f^l([d_cur^l_t, z^{l+1}_t])

drawn top-down with the same sites, plates and masks as the model, so that every
KL between guide and model stays analytic (paper 1, eq. 13 and 15). This class also
holds the top-down loop that :class:`guides.ladder.LadderGuide` reuses.

Each site also gives its density with every parameter stopped
(:mod:`pyro_stcn.inference.stopped`), which the sticking-the-landing and DReG gradients read:
q(z^l_t | z^{l+1}_t) with the guide's nets, the model's nets and the trunk features
held fixed, z^l_t and z^{l+1}_t live. It is built from :meth:`posterior_dist`, so a
subclass that overrides that hook gets it too.

For MS-STCN (paper 2, eq. 10), :class:`MultiscaleIndependentGuide` runs the model's own
top-down pass, drawing each z^l from

    q(z^l | ·) = N(Conv1x1([h^l, d^l]))    with d^l *not* delayed,

and hands that pass to the model, so the shared networks run once per step. With no
latent variables (the deterministic control) it draws nothing. Its stopped density
holds h^l fixed too (h^l is the model's top-down state, which z^{l+1} enters through
the model's networks): unbiased for sticking the landing, which is all MS-STCN trains
with (it draws one particle at a time, so not the importance-weighted objective).
"""

import dataclasses
from collections.abc import Mapping
from functools import partial

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from pyro_stcn.inference.params import pyro_module
from pyro_stcn.inference.stopped import LOG_PROB_STOPPED, frozen
from pyro_stcn.models.ms_stcn import MSSTCN, MSFeatures
from pyro_stcn.models.stcn import STCN
from pyro_stcn.nets.heads import GaussianHead, join, layer_heads
from pyro_stcn.nets.trunk import Features


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

    def context(self, layer: int, feats: Features, z_above: Tensor | None) -> Tensor:
        """What q(z^l_t | ·) sees: [d_cur^l_t, z^{l+1}_t], ``[batch, time, channels + z_{l+1}]``."""
        return join(feats.d_cur[layer], z_above)

    def posterior(self, layer: int, feats: Features, z_above: Tensor | None) -> tuple[Tensor, Tensor]:
        """(μ_q, σ_q) of q(z^l_t | ·), each ``[batch, time, z_l]``."""
        return self.estimate[layer](self.context(layer, feats, z_above))

    def posterior_dist(self, layer: int, feats: Features, z_above: Tensor | None) -> dist.TorchDistribution:
        """q(z^l_t | ·) with batch shape ``[batch, time]`` and event shape ``[z_l]``; the
        hook that richer posteriors (:mod:`guides.iaf`) override."""
        return dist.Normal(*self.posterior(layer, feats, z_above)).to_event(1)

    def log_prob_stopped(self, layer: int, feats: Features, mask: Tensor, values: Mapping[str, Tensor]) -> Tensor:
        """log q(z^l_t | z^{l+1}_t) at ``values["z_l"]``, ``[batch, time]``, with every
        parameter stopped: this guide's nets and the model's frozen, the trunk features
        detached, z^{l+1}_t read from ``values`` and left live (:mod:`pyro_stcn.inference.stopped`)."""
        d = Features(*([h.detach() for h in hs] for hs in feats))
        z_above = values.get(f"z_{layer + 2}")  # None at the top layer
        q = lambda: self.posterior_dist(layer, d, z_above).mask(mask).log_prob(values[f"z_{layer + 1}"])  # noqa: E731
        return frozen(q, self, self.stcn)

    def forward(self, x: Tensor, mask: Tensor) -> None:
        pyro_module("guide", self)
        feats = self.stcn.features.for_guide(x, mask)
        batch, time = mask.shape
        with pyro.plate("batch", batch, dim=-2), pyro.plate("time", time, dim=-1):
            z_above = None
            for layer in reversed(range(self.stcn.layers)):
                q = self.posterior_dist(layer, feats, z_above)
                stopped = partial(self.log_prob_stopped, layer, feats, mask)
                z_above = pyro.sample(f"z_{layer + 1}", q.mask(mask), infer={LOG_PROB_STOPPED: stopped})


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

    def context(self, layer: int, h: Tensor, feats: MSFeatures) -> Tensor:
        """What q(z^l) sees: [h^l, d^l] with d^l not delayed, ``[batch, T_l, 2 C_l]``."""
        # joined in the convolutions' layout, so the heads read it where it lies (ChannelLinear)
        return torch.cat([h.transpose(-1, -2), feats.d[layer]], dim=1).transpose(-1, -2)

    def posterior(self, layer: int, h: Tensor, feats: MSFeatures) -> tuple[Tensor, Tensor]:
        """(μ_q, σ_q) of q(z^l), each ``[batch, T_l, z_l]``; ``h`` is ``[batch, T_l, C_l]``."""
        return self.estimate[layer](self.context(layer, h, feats))

    def posterior_dist(self, layer: int, h: Tensor, feats: MSFeatures) -> dist.TorchDistribution:
        """q(z^l) with batch shape ``[batch, T_l]`` and event shape ``[z_l]``; the hook
        that richer posteriors (:mod:`guides.iaf`) override."""
        return dist.Normal(*self.posterior(layer, h, feats)).to_event(1)

    def log_prob_stopped(self, layer: int, h: Tensor, feats: MSFeatures, values: Mapping[str, Tensor]) -> Tensor:
        """log q(z^l) at ``values["z_l"]``, ``[batch, T_l]``, with this guide's nets and the
        model's frozen and h^l and d^l detached (:mod:`pyro_stcn.inference.stopped`)."""
        fixed = dataclasses.replace(feats, d=[d.detach() for d in feats.d])
        q = lambda: self.posterior_dist(layer, h.detach(), fixed).mask(feats.masks[layer])  # noqa: E731
        return frozen(lambda: q().log_prob(values[f"z_{layer + 1}"]), self, self.ms_stcn)

    def forward(self, x: Tensor, mask: Tensor) -> None:
        pyro_module("ms_stcn_guide", self)
        model = self.ms_stcn
        feats = model.features.for_guide(x, mask)
        batch_plate, _, time_plates = model.plates(feats)

        def sample(layer: int, h: Tensor) -> Tensor | None:
            if not model.config.latent:
                return None
            q = self.posterior_dist(layer, h, feats)
            stopped = partial(self.log_prob_stopped, layer, h, feats)
            with batch_plate, time_plates[layer]:
                return pyro.sample(f"z_{layer + 1}", q.mask(feats.masks[layer]), infer={LOG_PROB_STOPPED: stopped})

        feats.top_down = model.top_down(feats, sample)  # the model reuses this pass
