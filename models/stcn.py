"""STCN and STCN-dense as Pyro models (paper 1, section 3).

Generative model, for each step t, top-down over layers l = L..1:

    d_{t-1} = TCN(x_{<t})                          (pyro_stcn.nets.trunk)
    z^L_t  ~ p(z^L_t | d^L_{t-1})
    z^l_t  ~ p(z^l_t | z^{l+1}_t, d^l_{t-1})       (models.priors, eq. 8-10)
    x_t    ~ p(x_t | z^1_t)                        STCN        (eq. 11)
    x_t    ~ p(x_t | z^1_t, ..., z^L_t)            STCN-dense  (eq. 12)

The output net sees only the latents, never d directly.

Sites: ``z_L`` ... ``z_1``, each the prior's distribution ``.mask(mask)`` (by default
``Normal(loc, scale).to_event(1)``; ``models.priors`` has the others) with batch shape
``[batch, time]``, then the observation ``x``. The batch plate is dim -2 and the time
plate dim -1.

References:
    - [1] Aksan & Hilliges, "STCN: Stochastic Temporal Convolutional Networks", ICLR 2019.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from pyro_stcn.inference.handoff import FeatureHandoff, PriorHandoff
from pyro_stcn.inference.params import pyro_module
from pyro_stcn.models.priors import GaussianPrior, make_prior
from pyro_stcn.nets.checks import check_batch
from pyro_stcn.nets.generation import Draw, draw_from, over_trunk, sample, sampler, start_sequences
from pyro_stcn.nets.heads import join
from pyro_stcn.nets.masks import zero_padding
from pyro_stcn.nets.normalise import standardisation
from pyro_stcn.nets.observation import Observation, rename_old_observation_keys
from pyro_stcn.nets.trunk import Features, Wavenet


@dataclass
class STCNConfig:
    """Sizes of an STCN. ``z_dims`` runs bottom (l = 1) to top (l = L); L = len(z_dims)."""

    x_dim: int = 1
    likelihood: str = "bernoulli"
    dense: bool = True
    prior: str = "dynamic"
    z_dims: list[int] = field(default_factory=lambda: [32, 16, 8, 4, 2])
    channels: int = 256  # filters of every Wavenet block
    blocks: int = 6  # K: blocks per layer, dilations 1..2^(K-1)
    hidden: int = 256  # width of the prior, posterior and output 1x1 nets
    output_layers: int = 2  # 1x1 conv + ReLU layers before the likelihood head
    components: int = 20  # mixture components, for the gmm and handwriting likelihoods
    # Training-split statistics; the nets see (x - shift) / scale (pyro_stcn.nets.normalise).
    shift: list[float] | None = None
    scale: list[float] | None = None


class STCN(nn.Module):
    """STCN (``dense=False``) or STCN-dense (``dense=True``); :meth:`model` is the Pyro model."""

    # Given x, z_t meets only d_{t-1}(x), d_t(x) and x_t: each step is its own factor (pyro_stcn.inference.factors).
    factor_steps = 1

    def __init__(self, config: STCNConfig):
        super().__init__()
        self.config = config
        c = config
        self.trunk = Wavenet(c.x_dim, c.channels, layers=len(c.z_dims), blocks=c.blocks)
        contexts = [c.channels + above for above in c.z_dims[1:] + [0]]  # [d^l_{t-1}, z^{l+1}_t]
        self.prior = make_prior(c.prior, contexts, c.z_dims, c.hidden)
        out_dim = sum(c.z_dims) if c.dense else c.z_dims[0]
        self.units = standardisation(c.x_dim, c.shift, c.scale)
        self.observe = Observation(out_dim, c.hidden, c.output_layers, c.likelihood, c.x_dim, c.components, self.units)
        self.register_load_state_dict_pre_hook(rename_old_observation_keys)  # runs saved before Observation
        self.features = FeatureHandoff(self.trunk_features, self.trunk)
        self.priors = PriorHandoff(self.prior_gaussian, self.prior)  # from the ladder guide, once per step

    @property
    def layers(self) -> int:
        return len(self.config.z_dims)

    def trunk_features(self, x: Tensor, mask: Tensor) -> Features:
        check_batch(x, mask, self.config.x_dim)
        return self.trunk(self.units.normalise(x), mask)

    def observation(self, zs: list[Tensor]) -> dist.TorchDistribution:
        """p(x_t | ·) in data units from the latents ``zs`` (bottom first), each
        ``[batch, time, z_l]``."""
        return self.observe(self.output_input(zs))

    def output_input(self, zs: list[Tensor]) -> Tensor:
        """What the output net reads: [z^1, ..., z^L] (STCN-dense) or z^1 (STCN)."""
        return torch.cat(zs, dim=-1) if self.config.dense else zs[0]

    def prior_gaussian(self, layer: int, d_prev: Tensor, z_above: Tensor | None) -> tuple[Tensor, Tensor]:
        """(μ, σ) of a Gaussian prior p(z^l_t | [d^l_{t-1}, z^{l+1}_t]), ``d_prev`` that
        layer's ``[batch, time, channels]``."""
        return self.prior.gaussian(layer, join(d_prev, z_above))

    def prior_dist(self, layer: int, d_prev: Tensor, z_above: Tensor | None) -> dist.TorchDistribution:
        """p(z^l_t | [d^l_{t-1}, z^{l+1}_t]): a ladder guide's (μ, σ) for these very
        inputs if it handed them over (``self.priors``), so the same numbers computed once."""
        if type(self.prior).forward is GaussianPrior.forward:  # prior(l, c) = Normal(*gaussian(l, c)).to_event(1)
            given = self.priors.for_model(layer, d_prev, z_above)
            if given is not None:
                return dist.Normal(*given).to_event(1)
        return self.prior(layer, join(d_prev, z_above))

    def top_down(self, d_prev: list[Tensor], sample: Callable[[int, Tensor, Tensor | None], Tensor]) -> list[Tensor]:
        """z^L .. z^1 given ``d_prev`` (``[batch, time, channels]`` per layer), z^l drawn
        by ``sample(l, d^l_{t-1}, z^{l+1}_t)`` (``None`` at the top) from the prior of
        z^l, which conditions on those two; returns them bottom first."""
        zs: list[Tensor] = []
        z_above = None
        for layer in reversed(range(self.layers)):
            z_above = sample(layer, d_prev[layer], z_above)
            zs.insert(0, z_above)
        return zs

    def model(self, x: Tensor, mask: Tensor) -> None:
        """The generative model of ``x [batch, time, x_dim]`` under ``mask [batch, time]``."""
        pyro_module("stcn", self)
        feats = self.features.for_model(x, mask)
        batch, time = mask.shape
        with pyro.plate("batch", batch, dim=-2), pyro.plate("time", time, dim=-1):

            def sample(layer: int, d_prev: Tensor, z_above: Tensor | None) -> Tensor:
                return pyro.sample(f"z_{layer + 1}", self.prior_dist(layer, d_prev, z_above).mask(mask))

            zs = self.top_down(feats.d_prev, sample)
            pyro.sample("x", self.observation(zs).mask(mask), obs=zero_padding(x, mask))

    @sampler
    def generate(
        self, num: int, steps: int, prime: Tensor | None = None, cached: bool = True, draw: Draw = sample
    ) -> Tensor:
        """Ancestral samples ``[num, steps, x_dim]``: at each step z^L_t .. z^1_t from the
        prior, then x_t, each value ``draw(name, distribution)`` (a fresh sample by
        default). With ``prime [num, K, x_dim]`` the first K steps are those and the rest
        continues them (the papers' biased samples).

        ``cached`` runs the trunk one step at a time with fast-Wavenet queues (O(blocks)
        per step); otherwise it reruns the trunk over the last receptive field at every
        step, as the authors' code does (O(receptive field) per step). Both consume the
        same random draws, so with one seed they give the same sequences."""
        x, given = start_sequences(num, steps, self.config.x_dim, prime, like=next(self.parameters()))

        def prior(layer: int, d_prev: Tensor, z_above: Tensor | None) -> Tensor:
            return draw_from(draw, f"z_{layer + 1}", self.prior, layer, join(d_prev, z_above))

        def emit(d_prev: list[Tensor]) -> Tensor:  # z^L_t .. z^1_t, then x_t
            return draw_from(draw, "x", self.observe, self.output_input(self.top_down(d_prev, prior)))[:, 0]

        return over_trunk(self.trunk, self.units, x, given, cached, emit)
