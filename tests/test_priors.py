"""The swappable priors (models/priors.py) in every latent model: STCN, STCN-dense,
MS-STCN and the VRNN, each with the dynamic, standard and mixture priors. Causality by
gradients, site shapes and masks under validation, the mixture's density against a hand
computation, ancestral sampling through each model's ``generate``, training with the
Monte Carlo KL, the ladder guides' refusal of a non-Gaussian prior, and old runs."""

import dataclasses
import math

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from pyro.poutine.util import site_is_subsample

from pyro_stcn.models import MSSTCNConfig, VRNNConfig
from pyro_stcn.models.ms_stcn import default_dilations
from pyro_stcn.models.priors import PRIORS, DynamicPrior, MixturePrior, StandardPrior, make_prior
from pyro_stcn.runs.registry import make_guide, make_model
from tests.conftest import ragged_batch, tiny_config, traced
from tests.test_generation import _check_against_the_full_model

MODELS = ["stcn", "stcn-dense", "ms-stcn", "vrnn"]
STRIDES = [1, 2, 2]  # MS-STCN: layer l covers 1, 2, 4 fine steps


def tiny(name: str, prior: str):
    """A tiny model of 2-channel Gaussian data with the prior ``prior``, and a guide that
    fits it: the ladder (the VRNN's filtering posterior) unless the prior is not Gaussian."""
    if name == "ms-stcn":
        config = MSSTCNConfig(
            x_dim=2, likelihood="gaussian", components=2, strides=STRIDES, channels=[6] * 3, z_dims=[3] * 3,
            dilations=default_dilations(STRIDES, 2), prior=prior,
        )  # fmt: skip
    elif name == "vrnn":
        config = VRNNConfig(x_dim=2, likelihood="gaussian", hidden=8, z_dim=3, prior=prior)
    else:
        config = tiny_config(prior=prior)
    model = make_model(name, config)
    guide = "vrnn" if name == "vrnn" else "independent" if prior == "mixture" else "ladder"
    return model, make_guide(guide, model)


def _grad_by_step(output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """|d output / d x| summed over batch and channels: one number per fine step."""
    if not output.requires_grad:  # the N(0, I) prior sees no x at all
        return torch.zeros(x.shape[1])
    (grad,) = torch.autograd.grad(output, x, retain_graph=True, allow_unused=True)
    return torch.zeros(x.shape[1]) if grad is None else grad.abs().sum((0, 2))


def _prior_steps(name: str, trace, steps: int):
    """(site, its step index k, first fine step it must not see) for every latent site
    and step: z^l at coarse step k covers fine steps from k Π_{i<=l} s_i on (STCN: the
    step itself); the VRNN has one site per step."""
    if name == "vrnn":
        return [(f"z_t{t + 1}", 0, t) for t in range(steps)]
    covers = [math.prod(STRIDES[: l + 1]) for l in range(3)] if name == "ms-stcn" else [1, 1, 1]
    out = []
    for l in range(3):
        coarse = trace.nodes[f"z_{l + 1}"]["fn"].batch_shape[-1]
        out += [(f"z_{l + 1}", k, k * covers[l]) for k in range(coarse)]
    return out


@pytest.mark.parametrize("prior", list(PRIORS))
@pytest.mark.parametrize("name", MODELS)
def test_the_prior_at_t_sees_x_before_t_only(name, prior):
    """The log density of a fixed z under the prior at step t has no gradient with
    respect to x at or after t; a dynamic prior's has one with respect to x_{t-1} (the
    last fine step before a coarse step), the N(0, I) prior's none at all."""
    model, _ = tiny(name, prior)
    steps = 11  # two top MS-STCN blocks plus 3: padded
    x, mask = ragged_batch((steps, steps))
    x.requires_grad_(True)
    trace = poutine.trace(model.model).get_trace(x, mask)
    for site, k, start in _prior_steps(name, trace, steps):
        fn = trace.nodes[site]["fn"]
        value = torch.rand(fn.shape(), generator=torch.Generator().manual_seed(1))
        grad = _grad_by_step(fn.log_prob(value)[:, k].sum(), x)
        assert grad[start:].sum() == 0, f"{name}, {prior} prior: {site} at {k} sees x at fine steps >= {start}"
        if prior == "standard":
            assert grad.sum() == 0, f"{name}: the N(0, I) prior of {site} depends on x"
        elif 0 < start < steps:
            assert grad[start - 1] > 0, f"{name}, {prior} prior: {site} at {k} misses x_{start - 1}"


@pytest.mark.parametrize("prior", list(PRIORS))
@pytest.mark.parametrize("name", MODELS)
def test_site_shapes_and_masks(name, prior):
    """Under validation and with warnings as errors: each latent site has its layer's
    shape and plates in model and guide alike, padded steps score 0, and the mean-field
    ELBO (analytic KL, or sampled for the mixture) is finite."""
    model, guide = tiny(name, prior)
    lengths = (9, 6, 3)
    x, mask = ragged_batch(lengths)
    guide_trace, model_trace, loss = traced(model, guide, x, mask)
    assert math.isfinite(loss)
    nodes = model_trace.nodes.items()
    latents = [n for n, s in nodes if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)]
    if name == "vrnn":  # one site per step, [batch, 1]
        expected = [(f"z_t{t + 1}", (3, 1), 3, ["batch"], mask[:, t : t + 1]) for t in range(9)]
    else:
        covers = [1, 2, 4] if name == "ms-stcn" else [1, 1, 1]
        z_dims = [3, 3, 3] if name == "ms-stcn" else [4, 3, 2]
        expected = []
        for l in reversed(range(3)):
            coarse = -(-9 // 4) * 4 // covers[l] if name == "ms-stcn" else 9
            real = torch.arange(coarse) < torch.tensor([-(-n // covers[l]) for n in lengths]).unsqueeze(1)
            plate = f"time_{l + 1}" if name == "ms-stcn" else "time"
            expected.append((f"z_{l + 1}", (3, coarse), z_dims[l], ["batch", plate], real))
    assert latents == [e[0] for e in expected]
    for site_name, batch_shape, z_dim, plates, real in expected:
        for trace in (guide_trace, model_trace):
            site = trace.nodes[site_name]
            assert site["value"].shape == batch_shape + (z_dim,)
            assert site["fn"].batch_shape == batch_shape and site["fn"].event_shape == (z_dim,)
            assert [f.name for f in site["cond_indep_stack"]] == plates
        log_p = model_trace.nodes[site_name]["log_prob"]
        assert log_p.shape == batch_shape and (log_p[~real] == 0).all() and (log_p[real] != 0).all()
    if prior == "mixture":
        assert isinstance(model_trace.nodes[expected[0][0]]["fn"].base_dist, pyro.distributions.MixtureSameFamily)


def test_vectorised_particles_broadcast_the_stcn_context():
    """With a particle dim, [d^l_{t-1}, z^{l+1}_t] broadcasts d to z's leading dims."""
    model, guide = tiny("stcn-dense", "mixture")
    x, mask = ragged_batch((9, 6, 3))
    elbo = TraceMeanField_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=2)
    assert math.isfinite(elbo.loss(model.model, guide, x, mask))
    with pyro.plate("particles", 4, dim=-3):
        trace = poutine.trace(poutine.replay(model.model, trace=poutine.trace(guide).get_trace(x, mask)))
        trace = trace.get_trace(x, mask)
    assert trace.nodes["z_1"]["fn"].batch_shape == (4, 3, 9)


def test_mixture_density_by_hand():
    """log p(z) = logsumexp_k [log softmax(logits)_k + Σ_d log N(z_d; μ_kd, σ_kd)], from
    the heads' raw outputs and the Gaussian density written out; masked steps score 0;
    and samples have the mixture's mean Σ_k π_k μ_k."""
    torch.manual_seed(0)
    prior = MixturePrior([5, 7], [3, 2], hidden=6, layers=1, components=4)
    context = torch.randn(2, 6, 7)
    z = torch.randn(2, 6, 2)
    p = prior(1, context)
    assert p.batch_shape == (2, 6) and p.event_shape == (2,)
    head = prior.heads[1]
    log_w = torch.log_softmax(head.logits(context), dim=-1)  # [2, 6, K]
    loc = head.loc(context).reshape(2, 6, 4, 2)
    scale = F.softplus(head.scale(context)).clamp(1e-3, 5).reshape(2, 6, 4, 2)
    log_normal = -0.5 * ((z[..., None, :] - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)
    expected = torch.logsumexp(log_w + log_normal.sum(-1), dim=-1)
    torch.testing.assert_close(p.log_prob(z), expected)
    mask = torch.rand(2, 6) > 0.5
    torch.testing.assert_close(p.mask(mask).log_prob(z), torch.where(mask, expected, 0))
    draws = prior(1, context[:1, :1].expand(20000, 1, 7)).sample()  # one context, many draws
    mean = (log_w[0, 0].exp()[:, None] * loc[0, 0]).sum(0)
    torch.testing.assert_close(draws.mean((0, 1)), mean, atol=0.05, rtol=0)


def test_gaussian_priors_by_hand():
    """The dynamic prior is N(head(c), softplus(head(c)) clamped), here with 1x1 heads
    alone (as MS-STCN builds it); the standard prior N(0, I). Both give (μ, σ) by
    ``gaussian`` and, called, the Normal with batch shape ``context.shape[:-1]``."""
    torch.manual_seed(0)
    dynamic = DynamicPrior([5], [3], hidden=0, layers=0)
    context = torch.randn(2, 4, 5)
    loc, scale = dynamic.gaussian(0, context)
    head = dynamic.heads[0]
    torch.testing.assert_close(loc, context @ head.loc[0].weight.T + head.loc[0].bias)
    raw = context @ head.scale[0].weight.T + head.scale[0].bias
    torch.testing.assert_close(scale, torch.log1p(raw.exp()).clamp(1e-3, 5))
    p = dynamic(0, context)
    assert p.batch_shape == (2, 4) and p.event_shape == (3,)
    torch.testing.assert_close(p.base_dist.loc, loc)
    z = torch.randn(2, 4, 3)
    standard = StandardPrior([5], [3], hidden=8)(0, context)
    assert standard.batch_shape == (2, 4) and standard.event_shape == (3,)
    torch.testing.assert_close(standard.log_prob(z), -0.5 * (z**2).sum(-1) - 1.5 * math.log(2 * math.pi))


def test_bad_prior_input_is_refused_clearly():
    prior = make_prior("mixture", [5, 7], [3, 2], hidden=6)
    with pytest.raises(ValueError, match=r"MixturePrior layer 1 takes a context of 7 channels \[batch, time, 7\], got"):
        prior(1, torch.zeros(2, 3, 5))
    with pytest.raises(IndexError, match="MixturePrior has latent layers 0..1, got layer 2"):
        prior(2, torch.zeros(2, 3, 7))
    with pytest.raises(ValueError, match="one context size per latent layer"):
        make_prior("dynamic", [5], [3, 2], hidden=6)
    with pytest.raises(ValueError, match="unknown prior 'flow'; valid: dynamic, standard, mixture"):
        make_prior("flow", [5], [3], hidden=6)


@pytest.mark.parametrize("name", ["stcn", "stcn-dense", "ms-stcn"])
def test_generation_draws_from_the_mixture_prior(name):
    """Each draw of the sampler, primed or not, has the log density the full Pyro model
    gives it; the cached sampler equals rerunning the networks, draw for draw."""
    model, _ = tiny(name, "mixture")
    model.eval()
    steps = 8
    drawn = _check_against_the_full_model(model, steps)
    assert drawn["z_1"].shape == (2, steps, model.config.z_dims[0])
    _check_against_the_full_model(model, steps, prime=model.generate(2, 3))
    torch.manual_seed(1)
    cached = model.generate(3, 13)
    torch.manual_seed(1)
    torch.testing.assert_close(model.generate(3, 13, cached=False), cached, atol=1e-5, rtol=0)


def test_vrnn_generation_draws_from_the_mixture_prior():
    """The VRNN's sampler: each z_t's log density under the mixture it was drawn from
    equals the full model's, conditioned on the same z and run over the result."""
    model, _ = tiny("vrnn", "mixture")
    draws = []

    def record(name, distribution):
        value = distribution.sample()
        draws.append((name, value, distribution.log_prob(value)))
        return value

    generated = model.generate(2, 6, draw=record)
    z = [(value, log_p) for name, value, log_p in draws if name == "z"]
    conditioned = poutine.condition(model.model, data={f"z_t{t + 1}": v[:, None] for t, (v, _) in enumerate(z)})
    trace = poutine.trace(conditioned).get_trace(generated, torch.ones(2, 6, dtype=torch.bool))
    trace.compute_log_prob()
    for t, (_, log_p) in enumerate(z):
        assert isinstance(trace.nodes[f"z_t{t + 1}"]["fn"].base_dist, pyro.distributions.MixtureSameFamily)
        torch.testing.assert_close(trace.nodes[f"z_t{t + 1}"]["log_prob"][:, 0], log_p, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_mixture_prior_trains_by_svi(name):
    """With TraceMeanField_ELBO's sampled KL for the mixture, a few SVI steps lower the
    loss, measured before and after with the same draws."""
    model, guide = tiny(name, "mixture")
    x, mask = ragged_batch((9, 6, 3))
    elbo = TraceMeanField_ELBO(num_particles=4)

    def loss() -> float:
        pyro.set_rng_seed(3)
        with torch.no_grad():
            return elbo.loss(model.model, guide, x, mask)

    before = loss()
    svi = pyro.infer.SVI(model.model, guide, pyro.optim.Adam({"lr": 0.05}), TraceMeanField_ELBO())
    for _ in range(10):
        svi.step(x, mask)
    assert loss() < before - 0.05 * abs(before)


@pytest.mark.parametrize("name", ["stcn", "stcn-dense", "ms-stcn"])
def test_the_ladder_guide_refuses_a_non_gaussian_prior(name):
    model, _ = tiny(name, "mixture")
    with pytest.raises(ValueError, match="precision-weights with a Gaussian prior.*'mixture' prior.*independent guide"):
        make_guide("ladder", model)


@pytest.mark.parametrize("name", ["ms-stcn", "vrnn"])
def test_runs_saved_before_the_prior_interface_still_load(name):
    """Configs without a ``prior`` field get the dynamic prior; state dicts with the old
    keys (MS-STCN ``prior.<l>.*``, VRNN ``prior.loc.*``) load into the new modules."""
    model, _ = tiny(name, "dynamic")
    old_config = {k: v for k, v in dataclasses.asdict(model.config).items() if k != "prior"}
    fresh = make_model(name, type(model.config)(**old_config))
    assert fresh.config.prior == "dynamic"
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("prior.heads."):  # back to the old names
            rest = key.removeprefix("prior.heads.")
            key = "prior." + (rest if name == "ms-stcn" else rest.removeprefix("0."))
        state[key] = value
    assert any(k.startswith(("prior.0.", "prior.loc.")) for k in state)
    fresh.load_state_dict(state)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
