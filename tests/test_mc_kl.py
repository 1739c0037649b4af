"""Monte Carlo KL where torch has no analytic rule: a flow guide and a mixture prior.

With the pathwise gradient each objective must follow log q(z) - log p(z) at the
guide's reparameterised draw, per batch element and time step, exactly as
``TraceMeanField_ELBO`` does for the plain ELBO, and apply β, free bits and linear free
bits to those values shared equally among each vector's dimensions (λ in nats per
latent dimension, as for analytic KLs). Sticking the landing, the default gradient,
has its own tests (tests/test_stl.py).
"""

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from torch import Tensor, nn

from pyro_stcn.evaluation.bounds import sequence_terms
from pyro_stcn.guides import LadderGuide
from pyro_stcn.guides.independent import IndependentGuide
from pyro_stcn.inference.kl import unit_kl
from pyro_stcn.inference.objectives import AnnealedELBO, FreeBitsELBO, LayerwiseELBO, LinearFreeBitsELBO
from pyro_stcn.models import STCN
from pyro_stcn.nets.heads import join
from tests.conftest import ragged_batch, tiny_config
from tests.test_elbo import _loss_and_grads

FLOW_LAYERS = (0, 2)  # z_1 and z_3 through a flow, z_2 plain Gaussian: both KL paths in one objective


class FlowGuide(IndependentGuide):
    """The independent posterior, pushed through an affine autoregressive flow (an IAF
    step, Kingma et al. 2016) at the layers in ``FLOW_LAYERS``."""

    def __init__(self, stcn: STCN):
        super().__init__(stcn)
        self.flows = nn.ModuleDict(
            {str(layer): T.affine_autoregressive(stcn.config.z_dims[layer], hidden_dims=[8]) for layer in FLOW_LAYERS}
        )

    def q(self, layer: int, loc: Tensor, scale: Tensor) -> dist.TorchDistribution:
        base = dist.Normal(loc, scale).to_event(1)
        return dist.TransformedDistribution(base, [self.flows[str(layer)]]) if str(layer) in self.flows else base

    def forward(self, x: Tensor, mask: Tensor) -> None:
        feats = self.stcn.features.for_guide(x, mask)
        batch, time = mask.shape
        with pyro.plate("batch", batch, dim=-2), pyro.plate("time", time, dim=-1):
            z_above = None
            for layer in reversed(range(self.stcn.layers)):
                loc, scale = self.posterior(layer, feats, z_above)
                z_above = pyro.sample(f"z_{layer + 1}", self.q(layer, loc, scale).mask(mask))


class MixturePriorSTCN(STCN):
    """STCN whose prior at every layer is a mixture of K shifted copies of its Gaussian."""

    def __init__(self, config, components: int = 3):
        super().__init__(config)
        self.offsets = nn.ParameterList(nn.Parameter(torch.randn(components, z)) for z in config.z_dims)
        self.mix_logits = nn.Parameter(torch.randn(components))

    def prior_dist(self, layer, d_prev, z_above):
        loc, scale = self.prior.gaussian(layer, join(d_prev, z_above))
        components = dist.Normal(loc.unsqueeze(-2) + self.offsets[layer], scale.unsqueeze(-2)).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.mix_logits), components)


def _flow_setup():
    model = STCN(tiny_config())
    return model, FlowGuide(model)


def _mixture_setup():
    model = MixturePriorSTCN(tiny_config())
    return model, LadderGuide(model)


def _traces(model_fn, guide, x, mask, seed=3):
    pyro.set_rng_seed(seed)
    guide_trace = poutine.trace(guide).get_trace(x, mask)
    model_trace = poutine.trace(poutine.replay(model_fn, trace=guide_trace)).get_trace(x, mask)
    return guide_trace, model_trace


def _hand_log_q(site) -> Tensor:
    """log q(z) ``[batch, time]`` from the guide's loc, scale and flow, unmasked."""
    q = site["fn"].base_dist  # strip .mask()
    z = site["value"]
    if isinstance(q, dist.TransformedDistribution):
        (flow,) = q.transforms
        u = flow.inv(z)
        normal = q.base_dist.base_dist
        return normal.log_prob(u).sum(-1) - flow.log_abs_det_jacobian(u, z)
    return q.base_dist.log_prob(z).sum(-1)


def _hand_log_p(site) -> Tensor:
    """log p(z) ``[batch, time]`` from the prior's loc, scale (and mixture), unmasked."""
    p = site["fn"].base_dist
    z = site["value"]
    if isinstance(p, dist.MixtureSameFamily):
        normal = p.component_distribution.base_dist
        log_components = normal.log_prob(z.unsqueeze(-2)).sum(-1)  # [batch, time, K]
        return (log_components + p.mixture_distribution.logits.log_softmax(-1)).logsumexp(-1)
    return p.base_dist.log_prob(z).sum(-1)


def _gaussian_kl(q: dist.Normal, p: dist.Normal) -> Tensor:
    """Closed-form KL(N(μ_q, σ_q) || N(μ_p, σ_p)) per unit, ``[batch, time, z_dim]``."""
    return torch.log(p.scale / q.scale) + (q.scale**2 + (q.loc - p.loc) ** 2) / (2 * p.scale**2) - 0.5


def _hand_terms(model, guide, x, mask, seed=3) -> tuple[Tensor, list[Tensor]]:
    """log p(x | z) and, per latent site, its KL with padded steps 0, re-derived from the
    distributions' parameters: closed form per unit ``[batch, time, z_dim]`` between two
    Gaussians, else the Monte Carlo log q(z) - log p(z) per step ``[batch, time, 1]``."""
    guide_trace, model_trace = _traces(model.model, guide, x, mask, seed)
    x_site = model_trace.nodes["x"]
    log_lik = (x_site["fn"].base_dist.log_prob(x_site["value"]) * mask).sum()
    kls = []
    for layer in range(model.layers):
        q_site, p_site = guide_trace.nodes[f"z_{layer + 1}"], model_trace.nodes[f"z_{layer + 1}"]
        q, p = q_site["fn"].base_dist, p_site["fn"].base_dist  # strip .mask()
        if isinstance(q, dist.Independent) and isinstance(p, dist.Independent):
            kl = _gaussian_kl(q.base_dist, p.base_dist)
        else:
            kl = (_hand_log_q(q_site) - _hand_log_p(p_site)).unsqueeze(-1)
        kls.append(kl * mask.unsqueeze(-1))
    return log_lik, kls


@pytest.mark.parametrize("setup", [_flow_setup, _mixture_setup], ids=["flow-guide", "mixture-prior"])
def test_elbo_equals_trace_mean_field(setup):
    """Value and gradient equal Pyro's Monte Carlo fallback, draw for draw."""
    model, guide = setup()
    x, mask = ragged_batch((12, 7, 3))
    ref_loss, ref_grads = _loss_and_grads(TraceMeanField_ELBO(), model, guide, x, mask)
    loss, grads = _loss_and_grads(LayerwiseELBO(kl_gradient="pathwise"), model, guide, x, mask)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert any(g.abs().sum() > 0 for g in grads)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("setup", [_flow_setup, _mixture_setup], ids=["flow-guide", "mixture-prior"])
def test_monte_carlo_unit_kl_against_hand_computation(setup):
    """Shape [batch, time, 1], padded steps exactly 0, values log q - log p by hand;
    and evaluate's per-sequence KL is their sum over time."""
    model, guide = setup()
    x, mask = ragged_batch((12, 7, 3))
    guide_trace, model_trace = _traces(model.model, guide, x, mask)
    _, hand = _hand_terms(model, guide, x, mask)
    mc_layers = FLOW_LAYERS if setup is _flow_setup else range(model.layers)
    for layer in mc_layers:
        name = f"z_{layer + 1}"
        kl = unit_kl(guide_trace.nodes[name], model_trace.nodes[name])
        assert kl.shape == (3, 12, 1)
        assert (kl[~mask] == 0).all()
        torch.testing.assert_close(kl, hand[layer])
    pyro.set_rng_seed(3)
    _, per_sequence = sequence_terms(model.model, guide, x, mask)
    for layer in mc_layers:
        torch.testing.assert_close(per_sequence[f"z_{layer + 1}"], hand[layer].sum((-1, -2)))


def _linear_free_bits(kl: Tensor, lam: float) -> Tensor:
    return torch.where(kl >= lam, kl, kl * kl.detach().clamp(min=0) / lam)


@pytest.mark.parametrize("setup", [_flow_setup, _mixture_setup], ids=["flow-guide", "mixture-prior"])
@pytest.mark.parametrize(
    "elbo, formula",
    [
        (AnnealedELBO(beta=0.3, kl_gradient="pathwise"), lambda kl: 0.3 * kl),
        (FreeBitsELBO(lam=0.2, kl_gradient="pathwise"), lambda kl: kl.clamp(min=0.2)),
        (LinearFreeBitsELBO(lam=0.2, kl_gradient="pathwise"), lambda kl: _linear_free_bits(kl, 0.2)),
    ],
    ids=["annealed", "free-bits", "linear-free-bits"],
)
def test_surrogates_act_on_monte_carlo_kl_per_dimension(setup, elbo, formula):
    """The surrogate's gradient is that of -log p(x|z) + Σ f(KL_i) over the real latent
    dimensions i of each site, where a Monte Carlo site's KL_{n,t} = log q - log p (by
    hand) gives each of its z_l dimensions KL_{n,t} / z_l; the value is the true -ELBO."""
    model, guide = setup()
    x, mask = ragged_batch((12, 7, 3))
    params = list(model.parameters()) + list(guide.parameters())
    loss, grads = _loss_and_grads(elbo, model, guide, x, mask)

    log_lik, kls = _hand_terms(model, guide, x, mask)
    z_dims = model.config.z_dims
    units = [kl.repeat(1, 1, z) / z if kl.shape[-1] == 1 else kl for kl, z in zip(kls, z_dims)]  # per dimension
    real = torch.cat([u[mask].flatten() for u in units])
    assert (real < 0.2).any() and (real >= 0.2).any()  # both sides of λ are exercised
    expected_loss = -log_lik + sum(kl.sum() for kl in kls)
    assert loss == pytest.approx(expected_loss.item(), rel=1e-5)
    surrogate = -log_lik + sum(formula(u[mask]).sum() for u in units)
    expected = torch.autograd.grad(surrogate, params, allow_unused=True)
    for g, r, p in zip(grads, expected, params):
        torch.testing.assert_close(g, torch.zeros_like(p) if r is None else r, rtol=1e-4, atol=1e-5)
    _, true_grads = _loss_and_grads(LayerwiseELBO(kl_gradient="pathwise"), model, guide, x, mask)
    assert any(not torch.allclose(g, t) for g, t in zip(grads, true_grads))


def test_non_reparameterised_guide_is_refused():
    model = STCN(tiny_config())
    x, mask = ragged_batch((5, 4))

    def guide(x, mask):
        with pyro.plate("batch", 2, dim=-2), pyro.plate("time", 5, dim=-1):
            for layer in reversed(range(model.layers)):
                probs = torch.full((2, 5, model.config.z_dims[layer]), 0.5)
                pyro.sample(f"z_{layer + 1}", dist.Bernoulli(probs).to_event(1).mask(mask))

    guide_trace = poutine.trace(guide).get_trace(x, mask)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x, mask)
    expected = "'z_3'.*guide's Bernoulli.*model's Normal.*Monte Carlo KL needs a reparameterised"
    with pytest.raises(ValueError, match=expected):
        unit_kl(guide_trace.nodes["z_3"], model_trace.nodes["z_3"])


@pytest.mark.parametrize("setup", [_flow_setup, _mixture_setup], ids=["flow-guide", "mixture-prior"])
def test_site_masks_from_poutine_mask(setup):
    """A step masked by ``poutine.mask`` (a site mask, not the distribution's) adds
    exactly 0 KL, and the objective still equals ``TraceMeanField_ELBO``."""
    model, guide = setup()
    x, mask = ragged_batch((12, 7, 3))
    keep = torch.ones(3, 12, dtype=torch.bool)
    keep[0, 2:5] = False  # real steps of sequence 0, masked at the sites only
    masked_model, masked_guide = poutine.mask(model.model, mask=keep), poutine.mask(guide, mask=keep)
    guide_trace, model_trace = _traces(masked_model, masked_guide, x, mask)
    _, hand = _hand_terms(model, guide, x, mask)
    kl = unit_kl(guide_trace.nodes["z_1"], model_trace.nodes["z_1"])
    assert (kl[~keep] == 0).all() and (kl[keep & mask] != 0).all()
    torch.testing.assert_close(kl[keep], hand[0][keep])
    params = list(model.parameters()) + list(guide.parameters())
    results = []
    for elbo in (TraceMeanField_ELBO(), LayerwiseELBO(kl_gradient="pathwise")):
        pyro.set_rng_seed(3)
        loss = elbo.differentiable_loss(masked_model, masked_guide, x, mask)
        results.append((loss, torch.autograd.grad(loss, params, allow_unused=True)))
    (ref, ref_grads), (loss, grads) = results
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)
