"""The low-variance gradients of Monte Carlo KLs (``kl_gradient="stl"``): sticking the
landing (Roeder, Wu & Duvenaud 2017), and for a flow over a Gaussian base with a
Gaussian prior the base's KL in closed form plus the flow's sampled correction. The
value is unchanged to the bit, the gradient is unbiased (its mean over draws equals the
pathwise gradient's) and is not the pathwise one, the guide's gradient is exactly zero
when q equals p, a flow's density with its parameters stopped equals its cached density
at the same draw, and a flow at the identity gets exactly the closed-form KL's gradient."""

import copy
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions.transforms import AffineAutoregressive
from pyro.nn import AutoRegressiveNN
from torch import nn

from pyro_stcn.inference.kl import latent_values
from pyro_stcn.inference.objectives import LayerwiseELBO, LinearFreeBitsELBO
from pyro_stcn.inference.stopped import LOG_PROB_STOPPED, detached, frozen, stopped_log_prob
from pyro_stcn.runs.registry import make_guide, make_model
from tests.conftest import ragged_batch, tiny_config
from tests.test_ms_stcn import tiny_ms


def _setup(name: str):
    """(model, guide) with a Monte Carlo KL at every latent site."""
    if name == "iaf":
        model = make_model("stcn-dense", tiny_config())
    elif name in ("mixture", "iaf-mixture"):
        model = make_model("stcn-dense", tiny_config(prior="mixture"))
    else:  # ms-iaf
        model = make_model("ms-stcn", tiny_ms([1, 2, 2]))
    return model, make_guide("independent" if name == "mixture" else "iaf", model)


def _params(model, guide) -> list[torch.Tensor]:
    return [*model.parameters(), *guide.parameters()]


def _loss_and_grad(objective, model, guide, x, mask, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss and its gradient, flattened over every parameter, for the draws of ``seed``."""
    pyro.set_rng_seed(seed)
    loss = objective.differentiable_loss(model.model, guide, x, mask)
    grads = torch.autograd.grad(loss, _params(model, guide), allow_unused=True)
    return loss.detach(), torch.cat([torch.zeros(p.numel()) if g is None else g.flatten()
                                     for g, p in zip(grads, _params(model, guide))])  # fmt: skip


@pytest.mark.parametrize("setup", ["iaf", "mixture", "iaf-mixture", "ms-iaf"])
@pytest.mark.parametrize("objective", [LayerwiseELBO, lambda **kw: LinearFreeBitsELBO(lam=0.05, **kw)],
                         ids=["elbo", "linear-free-bits"])  # fmt: skip
@pytest.mark.parametrize("gradient", ["stl", "control-variate"])
def test_value_is_the_pathwise_value_to_the_bit_and_the_gradient_is_not(setup, objective, gradient):
    model, guide = _setup(setup)
    x, mask = ragged_batch((12, 7, 3))
    stl_loss, stl_grad = _loss_and_grad(objective(kl_gradient=gradient), model, guide, x, mask, seed=1)
    path_loss, path_grad = _loss_and_grad(objective(kl_gradient="pathwise"), model, guide, x, mask, seed=1)
    assert stl_loss.item() == path_loss.item()
    assert not torch.allclose(stl_grad, path_grad)


def _paired_differences(setup: str, draws: int, gradient: str = "stl") -> tuple[torch.Tensor, torch.Tensor]:
    """Per draw (seed), the gradient by ``gradient`` minus the pathwise one on the same
    draws ``[draws, parameters]``, and the pathwise gradients themselves."""
    model, guide = _setup(setup)
    x, mask = ragged_batch((12, 7, 3))
    differences, pathwise = [], []
    for seed in range(draws):
        _, stl = _loss_and_grad(LayerwiseELBO(kl_gradient=gradient), model, guide, x, mask, seed)
        _, path = _loss_and_grad(LayerwiseELBO(kl_gradient="pathwise"), model, guide, x, mask, seed)
        differences.append(stl - path)
        pathwise.append(path)
    return torch.stack(differences), torch.stack(pathwise)


def _mean_is_zero(differences: torch.Tensor) -> bool:
    """Along 6 fixed random directions, the mean of ``[draws, parameters]`` lies within
    4 standard errors of 0."""
    directions = torch.randn(differences.shape[1], 6, generator=torch.Generator().manual_seed(0))
    projected = differences @ directions  # [draws, 6]
    mean, se = projected.mean(0), projected.std(0) / math.sqrt(len(projected))
    return bool((mean.abs() < 4 * se).all())


@pytest.mark.parametrize(
    "gradient, setup",
    [("stl", "mixture"), ("stl", "iaf-mixture"), ("control-variate", "iaf"), ("control-variate", "mixture"),
     ("control-variate", "iaf-mixture")],
)  # fmt: skip
def test_gradient_mean_equals_the_pathwise_gradient_mean(gradient, setup):
    """Both estimators see the same draws, so their difference (for STL the score term
    it drops) must have mean zero over 64 draws. It is not small: its spread is a
    sizeable part of the gradient's own."""
    differences, pathwise = _paired_differences(setup, draws=64, gradient=gradient)
    assert _mean_is_zero(differences)
    assert differences.std(0).norm() > 0.1 * pathwise.std(0).norm()


def test_the_mean_check_sees_a_biased_gradient(monkeypatch):
    """The check above has power: dropping log q's gradient altogether (its path
    through z too) is biased, and fails it."""
    real = stopped_log_prob
    monkeypatch.setattr("pyro_stcn.inference.kl.stopped_log_prob", lambda site, values: real(site, values).detach())
    differences, _ = _paired_differences("mixture", draws=64)
    assert not _mean_is_zero(differences)


class _Flow(nn.Module):
    """N(μ, σ) through one affine autoregressive step, over ``dim`` dimensions."""

    def __init__(self, dim: int):
        super().__init__()
        self.loc = nn.Parameter(torch.randn(dim))
        self.log_scale = nn.Parameter(0.3 * torch.randn(dim))
        self.arn = AutoRegressiveNN(dim, [8])

    def dist(self, n: int) -> dist.TorchDistribution:
        base = dist.Normal(self.loc, self.log_scale.exp()).expand([n, len(self.loc)]).to_event(1)
        return dist.TransformedDistribution(base, [AffineAutoregressive(self.arn, stable=True)])


def _kl_only_gradients(prior_fn, guide_fn, guide_module: nn.Module, kl_gradient: str) -> list[torch.Tensor]:
    """The guide's gradient of the -ELBO of a model with one latent site and no data:
    the Monte Carlo KL alone."""

    def model():
        with pyro.plate("batch", 64):
            pyro.sample("z", prior_fn())

    def guide():
        with pyro.plate("batch", 64):
            pyro.sample("z", guide_fn(), infer=guide_fn.infer if hasattr(guide_fn, "infer") else {})

    pyro.set_rng_seed(2)
    loss = LayerwiseELBO(kl_gradient=kl_gradient).differentiable_loss(model, guide)
    return torch.autograd.grad(loss, list(guide_module.parameters()))


def test_guide_gradient_is_exactly_zero_when_a_flow_guide_equals_its_flow_prior():
    q = _Flow(3)
    p = copy.deepcopy(q)  # the same weights, its own parameters

    def guide_fn():
        return q.dist(64)

    guide_fn.infer = {LOG_PROB_STOPPED: lambda values: frozen(lambda: q.dist(64).log_prob(values["z"]), q)}
    stl = _kl_only_gradients(lambda: p.dist(64), guide_fn, q, "stl")
    assert all((g == 0).all() for g in stl)
    pathwise = _kl_only_gradients(lambda: p.dist(64), guide_fn, q, "pathwise")
    assert any(g.abs().max() > 1e-3 for g in pathwise)


def test_guide_gradient_is_exactly_zero_when_a_gaussian_guide_equals_a_one_component_mixture_prior():
    """The guide's Normal has no hook: it is read through its rebuilt, detached copy."""
    guide_params = nn.ParameterDict({"loc": nn.Parameter(torch.randn(3)), "scale": nn.Parameter(torch.rand(3) + 0.5)})
    loc, scale = guide_params["loc"].detach().clone(), guide_params["scale"].detach().clone()

    def prior():
        component = dist.Normal(loc.expand(64, 1, 3), scale).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=torch.zeros(64, 1)), component)

    def guide_fn():
        return dist.Normal(guide_params["loc"], guide_params["scale"]).expand([64, 3]).to_event(1)

    stl = _kl_only_gradients(prior, guide_fn, guide_params, "stl")
    assert all((g == 0).all() for g in stl)
    pathwise = _kl_only_gradients(prior, guide_fn, guide_params, "pathwise")
    assert any(g.abs().max() > 1e-3 for g in pathwise)


@pytest.mark.parametrize("setup", ["iaf", "ms-iaf"])
def test_a_flows_stopped_density_equals_its_cached_density_and_reaches_no_parameter(setup):
    """At the guide's own draws, the density with every parameter stopped (the flow
    inverted through its detached weights and context) equals the density the flow
    cached when it drew z; its gradient reaches z and nothing else."""
    model, guide = _setup(setup)
    x, mask = ragged_batch((12, 7, 3))
    guide_trace = poutine.trace(guide).get_trace(x, mask)
    values = latent_values(guide_trace)
    leaves = {name: value.detach().requires_grad_() for name, value in values.items()}
    for name, site in guide_trace.nodes.items():
        if name not in values:
            continue
        assert isinstance(site["fn"].base_dist, dist.TransformedDistribution)
        cached = site["fn"].log_prob(site["value"])
        torch.testing.assert_close(stopped_log_prob(site, values), cached, rtol=1e-5, atol=1e-5)
        stopped = stopped_log_prob(site, leaves).sum()
        assert all(g is None for g in torch.autograd.grad(stopped, _params(model, guide), allow_unused=True,
                                                          retain_graph=True))  # fmt: skip
        assert torch.autograd.grad(stopped, leaves[name])[0].abs().sum() > 0


def test_a_flow_at_the_identity_gets_the_closed_form_kl_and_its_gradient():
    """q = identity # N(μ, σ) against a Gaussian prior: the estimate is KL(N(μ, σ) || p) in
    closed form, value aside, and so is its gradient, to rounding."""
    loc = torch.randn(5, 3, requires_grad=True)
    prior_loc = torch.randn(5, 3, requires_grad=True)
    base = dist.Normal(loc, 0.7).to_event(1)
    q = dist.TransformedDistribution(base, [dist.transforms.AffineTransform(0.0, 1.0, event_dim=1)])

    def model():
        with pyro.plate("batch", 5):
            pyro.sample("z", dist.Normal(prior_loc, 1.3).to_event(1))

    def guide():
        with pyro.plate("batch", 5):
            pyro.sample("z", q)

    pyro.set_rng_seed(0)
    loss = LayerwiseELBO().differentiable_loss(model, guide)
    closed_form = torch.distributions.kl_divergence(dist.Normal(loc, 0.7), dist.Normal(prior_loc, 1.3)).sum()
    expected = torch.autograd.grad(closed_form, [loc, prior_loc])
    for got, want in zip(torch.autograd.grad(loss, [loc, prior_loc]), expected):
        torch.testing.assert_close(got, want)


def test_a_mixture_prior_is_stood_in_for_by_its_moments():
    """The stand-in's mean and variance are the mixture's (by sampling it); a mixture of
    coinciding components is its stand-in, so a Gaussian guide against it gets the
    closed-form KL's gradient."""
    from pyro_stcn.inference.kl import _moments

    g = torch.Generator().manual_seed(0)
    loc, scale, logits = torch.randn(4, 3, 2, generator=g), torch.rand(4, 3, 2, generator=g) + 0.2, torch.randn(4, 3)
    mixture = dist.MixtureSameFamily(dist.Categorical(logits=logits), dist.Normal(loc, scale).to_event(1))
    stand_in = _moments(mixture)
    samples = mixture.sample((200_000,))
    torch.testing.assert_close(stand_in.mean, samples.mean(0), atol=0.02, rtol=0)
    torch.testing.assert_close(stand_in.variance, samples.var(0), atol=0.03, rtol=0.02)

    guide_loc = torch.randn(5, 2, requires_grad=True)
    prior_loc = torch.randn(5, 2, requires_grad=True)

    def model():
        with pyro.plate("batch", 5):
            components = dist.Normal(prior_loc.unsqueeze(-2).expand(5, 3, 2), 1.3).to_event(1)
            pyro.sample("z", dist.MixtureSameFamily(dist.Categorical(logits=torch.zeros(5, 3)), components))

    def guide():
        with pyro.plate("batch", 5):
            pyro.sample("z", dist.Normal(guide_loc, 0.7).to_event(1))

    pyro.set_rng_seed(0)
    loss = LayerwiseELBO().differentiable_loss(model, guide)
    closed_form = torch.distributions.kl_divergence(dist.Normal(guide_loc, 0.7), dist.Normal(prior_loc, 1.3)).sum()
    expected = torch.autograd.grad(closed_form, [guide_loc, prior_loc])
    for got, want in zip(torch.autograd.grad(loss, [guide_loc, prior_loc]), expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_detached_rebuilds_parametric_distributions_and_refuses_others():
    loc = torch.randn(4, 3, requires_grad=True)
    for fn in (dist.Normal(loc, 1.5).to_event(1), dist.StudentT(4.0, loc, 2.0).mask(torch.rand(4, 3) > 0.5)):
        value = torch.randn(4, 3)
        rebuilt = detached(fn)
        assert type(rebuilt) is type(fn)
        torch.testing.assert_close(rebuilt.log_prob(value), fn.log_prob(value))
        assert not rebuilt.log_prob(value).requires_grad
    flow = _Flow(3).dist(4)
    with pytest.raises(ValueError, match="TransformedDistribution.*infer=.*log_prob_stopped.*pathwise"):
        detached(flow)


def test_free_bits_weigh_the_estimate_whose_gradient_they_scale():
    """Linear free bits on a flow guide with the control variate: the surrogate's
    gradient is that of -log p(x|z) + Σ_i f(KL_i) with KL_i the control variate's own
    estimate per latent dimension (closed-form base KL plus the flow's correction, by
    hand), not f of the plain log q - log p, whose weights on another estimate's
    gradient made the KL run away."""
    from tests.test_iaf import _iaf

    model = make_model("stcn-dense", tiny_config())
    guide = _iaf(model)  # flows away from the identity: the correction is not 0
    x, mask = ragged_batch((12, 7, 3))
    objective = LinearFreeBitsELBO(lam=0.3)
    params = _params(model, guide)
    pyro.set_rng_seed(4)
    loss = objective.differentiable_loss(model.model, guide, x, mask)
    grads = torch.autograd.grad(loss, params, allow_unused=True)

    pyro.set_rng_seed(4)
    guide_trace = poutine.trace(guide).get_trace(x, mask)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x, mask)
    x_site = model_trace.nodes["x"]
    surrogate = -(x_site["fn"].base_dist.log_prob(x_site["value"]) * mask).sum()
    plain, estimates = [], []
    for name in ("z_1", "z_2", "z_3"):
        q, z = guide_trace.nodes[name]["fn"].base_dist, guide_trace.nodes[name]["value"]  # the flow, unmasked
        prior = model_trace.nodes[name]["fn"].base_dist.base_dist  # Normal
        eps, log_det = z, 0.0
        for transform in reversed(q.transforms):
            before = transform.inv(eps)
            log_det, eps = log_det + transform.log_abs_det_jacobian(before, eps), before
        base = q.base_dist.base_dist  # Normal(μ̂, σ̂)
        estimate = (torch.distributions.kl_divergence(base, prior) + prior.log_prob(eps) - prior.log_prob(z)).sum(-1)
        units = (estimate - log_det)[mask] / z.shape[-1]  # each of the z_l dimensions' share
        weighted = torch.where(units >= 0.3, units, units * units.detach().clamp(min=0) / 0.3)
        surrogate = surrogate + z.shape[-1] * weighted.sum()
        estimates.append(units.detach())
        plain.append(((q.log_prob(z) - prior.log_prob(z).sum(-1))[mask] / z.shape[-1]).detach())
    estimates, plain = torch.cat(estimates), torch.cat(plain)
    assert (estimates < 0.3).any() and (estimates >= 0.3).any()  # both sides of λ
    assert ((plain >= 0.3) != (estimates >= 0.3)).any()  # the plain estimate would weigh some differently
    expected = torch.autograd.grad(surrogate, params, allow_unused=True)
    for g, e, p in zip(grads, expected, params):
        torch.testing.assert_close(torch.zeros_like(p) if g is None else g, torch.zeros_like(p) if e is None else e,
                                   rtol=1e-4, atol=1e-5)  # fmt: skip
