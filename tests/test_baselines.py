"""The baselines (Wavenet, Wavenet-dense, RNN, VRNN): causality, shapes, exact NLL for
the deterministic ones, and an analytic, masked KL for the VRNN, each against an
independent computation."""

import math

import pyro
import pytest
import torch
from pyro import poutine

from pyro_stcn.evaluation.bounds import evaluate_elbo, iwae_bound, sequence_terms
from pyro_stcn.inference.objectives import LayerwiseELBO
from pyro_stcn.models import RNNConfig, VRNNConfig, WavenetConfig
from pyro_stcn.runs.registry import default_guide, make_guide, make_model
from tests.conftest import ragged_batch

T = 12
DETERMINISTIC = ["wavenet", "wavenet-dense", "rnn"]
BASELINES = [*DETERMINISTIC, "vrnn"]


def tiny(name: str, likelihood: str = "gaussian"):
    """A small baseline over 2-channel data, its inputs standardised as after training."""
    common = dict(x_dim=2, likelihood=likelihood, components=3, shift=[0.5, -0.2], scale=[2.0, 0.5])
    config = {
        "wavenet": WavenetConfig(layers=3, channels=8, blocks=2, hidden=8, **common),
        "rnn": RNNConfig(hidden=8, **common),
        "vrnn": VRNNConfig(hidden=8, z_dim=3, **common),
    }[name.removesuffix("-dense")]
    model = make_model(name, config)
    return model, make_guide(default_guide(name), model)


def _grad_by_step(output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """|d output / d x| summed over batch and channels: one number per step."""
    (grad,) = torch.autograd.grad(output, x, retain_graph=True, allow_unused=True)
    return torch.zeros(x.shape[1]) if grad is None else grad.abs().sum((0, 2))


def _at(site: dict, t: int) -> torch.Tensor:
    """A scalar that changes with every parameter of a site's distribution at step t:
    the log density of a fixed point. Per-step sites (VRNN's z) are their own step."""
    fn = site["fn"]
    value = torch.rand(fn.shape(), generator=torch.Generator().manual_seed(1))
    log_p = fn.log_prob(value)
    return log_p[:, t].sum() if log_p.shape[-1] > 1 else log_p.sum()


@pytest.mark.parametrize("name", BASELINES)
def test_no_output_depends_on_the_present_or_future(name):
    model, guide = tiny(name)
    x, mask = ragged_batch((T, T))
    x.requires_grad_(True)
    model_trace = poutine.trace(model.model).get_trace(x, mask)
    for t in range(T):
        sites = ["x"] + ([f"z_t{t + 1}"] if name == "vrnn" else [])
        for site in sites:
            grad = _grad_by_step(_at(model_trace.nodes[site], t), x)
            assert grad[t:].sum() == 0, f"{name}: model site {site} at step {t} depends on x at steps >= {t}"
            if t > 0:  # and the check can see a dependence: on the step before
                assert grad[t - 1] > 0, f"{name}: {site} at step {t} does not see x_{t - 1}"
    if name == "vrnn":  # the filtering posterior sees x_{<=t}, never x_{>t}
        guide_trace = poutine.trace(guide).get_trace(x, mask)
        for t in range(T):
            grad = _grad_by_step(_at(guide_trace.nodes[f"z_t{t + 1}"], t), x)
            assert grad[t + 1 :].sum() == 0 and grad[t] > 0


@pytest.mark.parametrize("name", BASELINES)
def test_site_shapes_under_validation(name):  # conftest turns validation on
    model, guide = tiny(name)
    x, mask = ragged_batch((T, 7, 3))
    guide_trace = poutine.trace(guide).get_trace(x, mask)
    trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x, mask)
    trace.compute_log_prob()
    obs = trace.nodes["x"]
    assert obs["fn"].batch_shape == (3, T) and obs["fn"].event_shape == (2,) and obs["log_prob"].shape == (3, T)
    latents = [n for n, s in trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]]
    latents = [n for n in latents if n not in ("batch", "time")]
    if name == "vrnn":
        assert latents == [f"z_t{t + 1}" for t in range(T)]
        for n in latents:
            assert trace.nodes[n]["fn"].batch_shape == (3, 1) and trace.nodes[n]["fn"].event_shape == (3,)
            assert guide_trace.nodes[n]["fn"].batch_shape == (3, 1)
    else:
        assert latents == [] and [n for n, s in guide_trace.nodes.items() if s["type"] == "sample"] == []


@pytest.mark.parametrize("name", DETERMINISTIC)
@pytest.mark.parametrize("likelihood", ["gaussian", "gmm"])
def test_deterministic_models_report_the_exact_nll(name, likelihood):
    """-ELBO = -log p(x) with no KL; checked against the chain rule computed by the
    model's own step-by-step sampler, fed the real x_t in place of each draw."""
    model, guide = tiny(name, likelihood)
    torch.manual_seed(0)
    x = torch.randn(3, T, 2) * 2 + 0.5
    mask = torch.ones(3, T, dtype=torch.bool)
    report = evaluate_elbo(model.model, guide, list(x))
    assert report.kl_per_sequence == {}
    log_lik, kl = sequence_terms(model.model, guide, x, mask)
    assert kl == {}

    chain = torch.zeros(3)

    def real_step(name: str, distribution) -> torch.Tensor:
        nonlocal chain
        t = real_step.t
        chain = chain + distribution.log_prob(x[:, t : t + 1])[:, 0]
        real_step.t += 1
        return x[:, t : t + 1]

    for cached in (True, False) if name.startswith("wavenet") else (True,):
        real_step.t, chain = 0, torch.zeros(3)
        kwargs = {"cached": cached} if name.startswith("wavenet") else {}
        model.generate(3, T, draw=real_step, **kwargs)
        torch.testing.assert_close(chain, log_lik, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(torch.tensor(report.per_sequence), -log_lik.double().mean().float())
    bound, log_w = iwae_bound(model.model, guide, x, mask, samples=5, chunk=2)
    torch.testing.assert_close(bound, log_lik)  # every weight is p(x): the bound is exact
    assert (log_w == log_w[0]).all()


def _independent_vrnn_elbo(model, guide, x, mask, z):
    """The VRNN's ELBO per sequence from the networks in plain torch, with the guide's
    draws ``z [batch, time, z_dim]`` and the closed-form Gaussian KL."""
    x_feat = model.phi_x(torch.where(mask[..., None], (x - torch.tensor([0.5, -0.2])) / torch.tensor([2.0, 0.5]), 0))
    h = torch.zeros(len(x), model.config.hidden)
    c = torch.zeros_like(h)
    log_lik, kl = torch.zeros(len(x)), torch.zeros(len(x))
    for t in range(x.shape[1]):
        mu_p, sd_p = model.prior.gaussian(0, h)
        mu_q, sd_q = guide.encoder(torch.cat([x_feat[:, t], h], -1))
        kl_t = (sd_p.log() - sd_q.log() + (sd_q**2 + (mu_q - mu_p) ** 2) / (2 * sd_p**2) - 0.5).sum(-1)
        p_x = model.observe(torch.cat([model.phi_z(z[:, t]), h], -1))
        log_lik += torch.where(mask[:, t], p_x.log_prob(torch.where(mask[:, t, None], x[:, t], 0)), 0)
        kl += torch.where(mask[:, t], kl_t, 0)
        h, c = model.cell(torch.cat([x_feat[:, t], model.phi_z(z[:, t])], -1), (h, c))
    return log_lik, kl


def test_vrnn_kl_is_analytic_and_masked():
    model, guide = tiny("vrnn")
    x, mask = ragged_batch((T, 7, 3))
    pyro.set_rng_seed(3)
    guide_trace = poutine.trace(guide).get_trace(x, mask)
    z = torch.cat([guide_trace.nodes[f"z_t{t + 1}"]["value"] for t in range(T)], dim=1)
    log_lik, kl = _independent_vrnn_elbo(model, guide, x, mask, z)
    pyro.set_rng_seed(3)  # the same draws again
    got_lik, got_kl = sequence_terms(model.model, guide, x, mask)
    torch.testing.assert_close(got_lik, log_lik, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got_kl["z"], kl, rtol=1e-5, atol=1e-5)  # one layer: all steps grouped
    assert (kl[1:] < kl[0]).all()  # the short sequences' padded steps add nothing
    elbo = LayerwiseELBO()
    pyro.set_rng_seed(3)
    loss = elbo.loss(model.model, guide, x, mask)
    assert math.isclose(loss, float((kl.sum() - log_lik.sum()).detach()), rel_tol=1e-5)
    assert set(elbo.kl) == {"z"} and math.isclose(elbo.kl["z"], float(kl.sum().detach()), rel_tol=1e-5)


def test_vrnn_model_reuses_the_guides_recurrence_exactly():
    """Handing the guide's LSTM states to the model changes nothing but the cost: under
    replay the model runs no LSTM step at all; given other z it recomputes them all."""
    model, guide = tiny("vrnn")
    x, mask = ragged_batch((T, 7, 3))
    calls = []
    model.cell.register_forward_hook(lambda *_: calls.append(1))
    log_p = {}
    for case in ("handed over", "recomputed", "other z"):
        pyro.set_rng_seed(5)
        guide_trace = poutine.trace(guide).get_trace(x, mask)
        if case == "recomputed":
            model.features.for_model(x, mask)  # takes the guide's pass, so the model recomputes it
        if case == "other z":  # the guide has handed over its pass, but these are not its z
            other = {f"z_t{t + 1}": guide_trace.nodes[f"z_t{t + 1}"]["value"] + 0.5 for t in range(T)}
            calls.clear()
            trace = poutine.trace(poutine.condition(model.model, data=other)).get_trace(x, mask)
            assert len(calls) == T
            model.features.for_model(x, mask)  # nothing pending: a fresh run
            fresh = poutine.trace(poutine.condition(model.model, data=other)).get_trace(x, mask)
            torch.testing.assert_close(trace.log_prob_sum(), fresh.log_prob_sum())
            continue
        calls.clear()
        trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x, mask)
        assert len(calls) == (0 if case == "handed over" else T)
        log_p[case] = trace.log_prob_sum()
    torch.testing.assert_close(log_p["handed over"], log_p["recomputed"])


def test_vrnn_sampler_draws_from_the_model():
    """Each draw of the step-by-step sampler, primed or not, has the log-density the
    full Pyro model gives it when conditioned on the same z and run over the result."""
    model, _ = tiny("vrnn")
    x, _ = ragged_batch((T, T))
    for prime in (None, x[:, :4]):
        draws = []

        def record(name: str, distribution, draws=draws) -> torch.Tensor:
            value = distribution.sample()
            draws.append((name, value, distribution.log_prob(value)))
            return value

        generated = model.generate(2, T, prime=prime, draw=record)
        z = [value for name, value, _ in draws if name == "z"]
        given = 0 if prime is None else prime.shape[1]
        conditioned = poutine.condition(model.model, data={f"z_t{t + 1}": z[t][:, None] for t in range(T)})
        trace = poutine.trace(conditioned).get_trace(generated, torch.ones(2, T, dtype=torch.bool))
        trace.compute_log_prob()
        x_log_p = [log_p for name, _, log_p in draws if name == "x"]
        z_log_p = [log_p for name, _, log_p in draws if name == "z"]
        assert len(x_log_p) == T - given and len(z_log_p) == T
        close = dict(atol=1e-4, rtol=1e-5)
        for t in range(T):
            torch.testing.assert_close(trace.nodes[f"z_t{t + 1}"]["log_prob"][:, 0], z_log_p[t], **close)
        for t in range(given, T):
            torch.testing.assert_close(trace.nodes["x"]["log_prob"][:, t], x_log_p[t - given][:, 0], **close)


def test_vrnn_refuses_vectorised_particles_clearly():
    model, guide = tiny("vrnn")
    x, mask = ragged_batch((T, 7, 3))
    elbo = LayerwiseELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=2)
    with pytest.raises(NotImplementedError, match="one particle at a time"):
        elbo.loss(model.model, guide, x, mask)


def test_vrnn_importance_weighted_bound_is_at_least_the_elbo():
    """Against the ELBO of 2000 independent draws with the analytic KL (not the bound's
    own log weights), allowing the Monte Carlo error of both: the ELBO's standard error,
    and the bound's by the delta method, sd(w / mean w) / sqrt(K)."""
    model, guide = tiny("vrnn")
    x, mask = ragged_batch((T, 7, 3))
    draws = 2000
    with torch.no_grad():
        log_lik, kl = sequence_terms(model.model, guide, x.repeat(draws, 1, 1), mask.repeat(draws, 1))
    elbo = (log_lik - kl["z"]).reshape(draws, 3)
    elbo_mean, elbo_se = elbo.mean(0), elbo.std(0) / math.sqrt(draws)
    bounds = []
    for k in (1, 16, 256):
        pyro.set_rng_seed(0)
        bound, log_w = iwae_bound(model.model, guide, x, mask, samples=k, chunk=16)
        if k > 1:
            bound_se = (log_w - log_w.logsumexp(0)).exp().mul(k).std(0) / math.sqrt(k)
            assert (bound >= elbo_mean - 4 * (elbo_se + bound_se)).all()
        bounds.append(bound)
    assert (bounds[2] > elbo_mean + 4 * elbo_se).all()  # K = 256 is clear of the ELBO's Monte Carlo error
    assert (bounds[2] > bounds[0]).all()


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_generate_and_continue_a_prime(name):
    model, _ = tiny(name)
    x, _ = ragged_batch((T, T))
    torch.manual_seed(0)
    free = model.generate(2, T)
    primed = model.generate(2, T, prime=x[:, :5])
    assert free.shape == primed.shape == (2, T, 2) and torch.isfinite(free).all()
    assert torch.equal(primed[:, :5], x[:, :5]) and (primed[:, 5:] != 0).any()
    if name.startswith("wavenet"):  # the fast-Wavenet queues give what rerunning the trunk gives
        torch.manual_seed(1)
        cached = model.generate(2, T)
        torch.manual_seed(1)
        torch.testing.assert_close(model.generate(2, T, cached=False), cached)


def test_vrnn_trains_under_plain_pyro_svi():
    model, guide = tiny("vrnn")
    x, mask = ragged_batch((T, 7, 3))
    svi = pyro.infer.SVI(model.model, guide, pyro.optim.Adam({"lr": 0.02}), LayerwiseELBO())
    first = svi.step(x, mask)
    for _ in range(30):
        last = svi.step(x, mask)
    assert last < first
