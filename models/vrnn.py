"""The variational RNN (Chung et al. 2015): the stochastic recurrent baseline of paper 1.

For each step t, with h_0 = 0 (eq. 5-7 of [1]):

    z_t ~ p(z_t | h_{t-1}) = N(μ_0,t, σ_0,t),    [μ_0,t, σ_0,t] = φ_prior(h_{t-1})
    x_t ~ p(x_t | z_t, h_{t-1}) = likelihood(φ_dec([φ_z(z_t), h_{t-1}]))
    h_t = LSTM([φ_x(x_t), φ_z(z_t)], h_{t-1})

The guide (``guides/vrnn.py``) is the filtering posterior q(z_t | x_{<=t}, z_{<t}) =
N(φ_enc([φ_x(x_t), h_{t-1}])). The recurrence through z is sequential, so there is one
latent site per step, ``z_t1 .. z_tT``, each the prior's distribution (by default
``Normal(loc, scale).to_event(1)``; ``models.priors`` has the others) with batch shape
``[batch, 1]`` under the batch plate (dim -2), masked on padded steps.
What does not need the recurrence is vectorised over time: φ_x over all of x first, and
the decoder and the observation site ``x`` (batch shape ``[batch, time]``) after.

Every latent site carries ``infer={"layer": "z"}``, so that the ELBO's KL record and
the evaluation report one KL for the whole sequence rather than one per step.

The guide runs the recurrence with its own draws and hands the pass to the model
(``pyro_stcn.inference.handoff``, as MS-STCN does): while the model's sites return the guide's
very z tensors, as under Pyro's replay, it takes the guide's LSTM states rather than
recomputing them, so each SVI step runs the LSTM once.

References:
    - [1] Chung et al., "A Recurrent Latent Variable Model for Sequential Data", NeurIPS 2015.
    - [2] Aksan & Hilliges, "STCN", ICLR 2019, Table 1.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from pyro_stcn.inference.handoff import FeatureHandoff
from pyro_stcn.inference.params import pyro_module
from pyro_stcn.models.priors import make_prior, rename_old_prior_keys
from pyro_stcn.nets.checks import check_batch
from pyro_stcn.nets.generation import Draw, draw_from, sample, sampler, start_sequences
from pyro_stcn.nets.masks import zero_padding
from pyro_stcn.nets.normalise import standardisation
from pyro_stcn.nets.observation import Observation


@dataclass
class VRNNConfig:
    x_dim: int = 1
    likelihood: str = "bernoulli"
    hidden: int = 128  # width of the LSTM state, φ_x, φ_z and the prior, encoder and output nets
    z_dim: int = 16
    output_layers: int = 2
    prior: str = "dynamic"  # p(z_t | h_{t-1}), a name in models.priors.PRIORS
    components: int = 20
    shift: list[float] | None = None
    scale: list[float] | None = None


def latent_site(t: int, z: dist.TorchDistribution, mask: Tensor) -> Tensor:
    """The site of z_t ~ ``z``, a distribution with batch shape ``[batch, 1]`` and event
    shape ``[z_dim]``, masked by ``mask[:, t]``; shared by model and guide, so that
    their sites match (and a Gaussian pair's KL stays analytic). Returns the site's
    value, ``[batch, 1, z_dim]``."""
    return pyro.sample(f"z_t{t + 1}", z.mask(mask[:, t, None]), infer={"layer": "z"})


class Pass(NamedTuple):
    """One run of the recurrence: h_{t-1} ``[batch, time, hidden]`` and z_t ``[batch,
    time, z_dim]`` for every t; the sites' values and the LSTM state after each step."""

    h_prev: Tensor
    z: Tensor
    sites: list[Tensor]
    states: list[tuple[Tensor, Tensor]]


@dataclass
class VRNNFeatures:
    x: Tensor  # φ_x(x_t) for every step, [batch, time, hidden]
    guide_pass: Pass | None = None  # the guide's recurrence over these features


class VRNN(nn.Module):
    """The VRNN's generative networks; :meth:`model` is the Pyro model."""

    factor_steps = None  # z_t feeds the LSTM state: no factorisation over time (pyro_stcn.inference.factors)

    def __init__(self, config: VRNNConfig):
        super().__init__()
        self.config = c = config
        self.phi_x = nn.Sequential(nn.Linear(c.x_dim, c.hidden), nn.ReLU())
        self.phi_z = nn.Sequential(nn.Linear(c.z_dim, c.hidden), nn.ReLU())
        self.prior = make_prior(c.prior, [c.hidden], [c.z_dim], c.hidden, layers=1)  # context h_{t-1}
        self.cell = nn.LSTMCell(2 * c.hidden, c.hidden)
        self.units = standardisation(c.x_dim, c.shift, c.scale)
        obs = (2 * c.hidden, c.hidden, c.output_layers, c.likelihood, c.x_dim, c.components, self.units)
        self.observe = Observation(*obs)
        self.register_load_state_dict_pre_hook(rename_old_prior_keys)  # runs saved before models.priors
        self.features = FeatureHandoff(self.x_features, self)

    def x_features(self, x: Tensor, mask: Tensor) -> VRNNFeatures:
        """φ_x(x_t) for every step at once."""
        check_batch(x, mask, self.config.x_dim)
        return VRNNFeatures(self.phi_x(zero_padding(self.units.normalise(x), mask)))

    def step(self, state: tuple[Tensor, Tensor], x_feat: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """h_t = LSTM([φ_x(x_t), φ_z(z_t)], h_{t-1}) from ``x_feat`` = φ_x(x_t) and z_t, ``[batch, ·]``."""
        return self.cell(torch.cat([x_feat, self.phi_z(z)], dim=-1), state)

    def recurrence(self, x_feat: Tensor, draw: Callable[[int, Tensor], Tensor], reuse: Pass | None = None) -> Pass:
        """Run h_0 .. h_{T-1} over ``x_feat [batch, time, hidden]`` with the site of z_t
        drawn by ``draw(t, h_{t-1})`` (its value ``[batch, 1, z_dim]``).

        ``reuse`` is a pass over the same features: while ``draw`` returns its very
        values, its states are taken instead of recomputed."""
        batch, time, _ = x_feat.shape
        h = x_feat.new_zeros(batch, self.config.hidden)
        state, same = (h, torch.zeros_like(h)), reuse is not None
        h_prev, sites, states = [], [], []
        for t in range(time):
            site = draw(t, state[0])
            if site.dim() > 3:
                raise NotImplementedError(
                    "the VRNN draws one particle at a time: use num_particles without vectorize_particles, "
                    "and Predictive(parallel=False)"
                )
            same = same and site is reuse.sites[t]
            h_prev.append(state[0])
            sites.append(site)
            state = reuse.states[t] if same else self.step(state, x_feat[:, t], site[..., 0, :])
            states.append(state)
        return Pass(torch.stack(h_prev, dim=1), torch.cat(sites, dim=-2), sites, states)

    def observation(self, z: Tensor, h_prev: Tensor) -> dist.TorchDistribution:
        """p(x_t | z_t, h_{t-1}) for ``z [batch, time, z_dim]``, ``h_prev [batch, time, hidden]``."""
        return self.observe(self.output_input(z, h_prev))

    def output_input(self, z: Tensor, h_prev: Tensor) -> Tensor:
        """What the output net reads: [φ_z(z_t), h_{t-1}]."""
        return torch.cat([self.phi_z(z), h_prev], dim=-1)

    def model(self, x: Tensor, mask: Tensor) -> None:
        """The generative model of ``x [batch, time, x_dim]`` under ``mask [batch, time]``."""
        pyro_module("vrnn", self)
        feats = self.features.for_model(x, mask)
        batch, time = mask.shape

        def draw(t: int, h_prev: Tensor) -> Tensor:  # z_t ~ p(z_t | h_{t-1})
            return latent_site(t, self.prior(0, h_prev.unsqueeze(-2)), mask)

        with pyro.plate("batch", batch, dim=-2):
            run = self.recurrence(feats.x, draw, reuse=feats.guide_pass)
            with pyro.plate("time", time, dim=-1):
                pyro.sample("x", self.observation(run.z, run.h_prev).mask(mask), obs=zero_padding(x, mask))

    @sampler
    def generate(self, num: int, steps: int, prime: Tensor | None = None, draw: Draw = sample) -> Tensor:
        """Ancestral samples ``[num, steps, x_dim]``: z_t from the prior, then x_t, each
        value ``draw(name, distribution)``. With ``prime [num, K, x_dim]`` the first K
        steps are those; their z_t come from the prior too (the guide's filtering
        posterior would be closer to the given steps)."""
        x, given = start_sequences(num, steps, self.config.x_dim, prime, like=next(self.parameters()))
        h = x.new_zeros(num, self.config.hidden)
        state = (h, torch.zeros_like(h))
        for t in range(steps):
            h = state[0]
            z = draw_from(draw, "z", self.prior, 0, h)
            if t >= given:
                x[:, t] = draw_from(draw, "x", self.observe, self.output_input(z[:, None], h[:, None]))[:, 0]
            state = self.step(state, self.phi_x(self.units.normalise(x[:, t])), z)
        return x
