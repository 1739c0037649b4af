"""The IAF guides: causal in time, the model's site shapes and masks, padding ignored, a
density that matches the change of variables, trainable by Pyro's own ELBO, saved in
the guide's state_dict, and working with one-dimensional latents."""

import warnings

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, TraceMeanField_ELBO
from torch.distributions import kl_divergence

from pyro_stcn.guides import IAFGuide, MultiscaleIAFGuide
from pyro_stcn.runs.registry import family_of, make_guide, make_model
from tests.conftest import ragged_batch, tiny_config, traced
from tests.test_causality import _grad_by_step
from tests.test_ms_stcn import tiny_ms

T = 12
STCN_NAMES = ["stcn", "stcn-dense"]


def _iaf(model, **kwargs):
    """An IAF guide whose flows have left their identity start (random output layers), so
    that what the flows do is seen."""
    guide = make_guide("iaf", model) if not kwargs else type(make_guide("iaf", model))(model, **kwargs)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for steps in guide.flow:
            for step in steps:
                for p in (step.nn.layers[-1].weight, step.nn.layers[-1].bias):
                    p.copy_(0.3 * torch.randn(p.shape, generator=generator))
    return guide


def _fixed_point_log_prob(fn, k: int) -> torch.Tensor:
    """log q of a fixed point at step k, summed over the batch (scored by inverting the flow)."""
    value = torch.rand(fn.shape(), generator=torch.Generator().manual_seed(1))
    return fn.log_prob(value)[:, k].sum()


def _by_jacobian(fn, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, log q(z)) for z = f(ε), f the site's flow, by the change of variables
    log q(z) = log N(ε; μ̂, σ̂) - log|det ∂f/∂ε|, with the Jacobian from autograd.
    Also asserts that ∂f/∂ε has no entries across steps or sequences."""
    flow = fn.base_dist  # the MaskedDistribution's TransformedDistribution

    def f(e):
        for transform in flow.transforms:
            e = transform(e)
        return e

    batch, time, z_dim = eps.shape
    n = batch * time
    jac = torch.autograd.functional.jacobian(f, eps).reshape(n, z_dim, n, z_dim)
    unit = torch.arange(n)
    blocks = jac[unit, :, unit, :]  # [n, z, z]: each unit's own Jacobian
    across = jac.clone()
    across[unit, :, unit, :] = 0
    assert across.abs().max() == 0, "the flow mixes latents of different steps or sequences"
    log_det = torch.linalg.slogdet(blocks).logabsdet.reshape(batch, time)
    return f(eps), flow.base_dist.log_prob(eps) - log_det


def _check_density(fn, mask: torch.Tensor) -> None:
    """The site's log_prob, scored from a cached draw and by inverting the flow, equals the
    change of variables at real steps and is 0 at padded ones; the flow is not the identity."""
    flow = fn.base_dist
    eps = flow.base_dist.sample()
    z = eps
    for transform in flow.transforms:
        z = transform(z)
    cached = fn.log_prob(z)  # the transforms still hold this draw: no inversion
    z_again, expected = _by_jacobian(fn, eps)
    torch.testing.assert_close(z_again, z)
    inverted = fn.log_prob(z.detach().clone())  # a new tensor: Pyro inverts the flow
    for log_q in (cached, inverted):
        torch.testing.assert_close(log_q[mask], expected[mask], rtol=1e-4, atol=1e-4)
        assert (log_q[~mask] == 0).all()
    assert (expected - flow.base_dist.log_prob(eps)).abs().min() > 1e-3  # a real flow


def _ms_model(strides=(1, 2, 2), **overrides):
    return make_model("ms-stcn", tiny_ms(list(strides), **overrides))


def test_registered_for_both_models():
    assert family_of("stcn").guides["iaf"] is IAFGuide and family_of("ms-stcn").guides["iaf"] is MultiscaleIAFGuide
    assert isinstance(make_guide("iaf", make_model("stcn-dense", tiny_config())), IAFGuide)
    assert isinstance(make_guide("iaf", _ms_model()), MultiscaleIAFGuide)
    with pytest.raises(ValueError, match="flows=0"):
        IAFGuide(make_model("stcn", tiny_config()), flows=0)


@pytest.mark.parametrize("model_name", STCN_NAMES)
def test_stcn_posterior_is_causal(model_name):
    """z^l_t (a draw under fixed noise) and log q of a fixed z^l_t depend on x_t and on
    nothing after t."""
    model = make_model(model_name, tiny_config())
    guide = _iaf(model)
    x, mask = ragged_batch((T, T))
    x.requires_grad_(True)
    trace = poutine.trace(guide).get_trace(x, mask)
    for t in range(T):
        for name in ("z_1", "z_2", "z_3"):
            site = trace.nodes[name]
            for what, out in (("draw", site["value"][:, t].sum()), ("log q", _fixed_point_log_prob(site["fn"], t))):
                grad = _grad_by_step(out, x)
                assert grad[t + 1 :].sum() == 0, f"{what} of {name} at step {t} depends on x after {t}"
                assert grad[t] > 0, f"{what} of {name} at step {t} misses x_{t}"


def test_ms_stcn_posterior_is_causal():
    """As tests/test_ms_stcn.py's posterior reach: q(z^l) at coarse step k sees its own
    block's last fine step and nothing past the end of the top layer's block (4 steps)."""
    model = _ms_model()
    guide = _iaf(model)
    x, mask = ragged_batch((16, 16))
    x.requires_grad_(True)
    trace = poutine.trace(guide).get_trace(x, mask)
    for l, covers in enumerate([1, 2, 4]):
        site = trace.nodes[f"z_{l + 1}"]
        for k in range(site["fn"].batch_shape[-1]):
            own_end = (k + 1) * covers - 1
            top_end = (k * covers // 4 + 1) * 4 - 1
            for what, out in (("draw", site["value"][:, k].sum()), ("log q", _fixed_point_log_prob(site["fn"], k))):
                grad = _grad_by_step(out, x)
                assert grad[own_end] > 0, f"{what} of z_{l + 1} at {k} misses fine step {own_end}"
                assert grad[top_end + 1 :].sum() == 0, f"{what} of z_{l + 1} at {k} sees past fine step {top_end}"


def _assert_sites_match(guide_trace, model_trace, names, masks) -> None:
    for name, mask in zip(names, masks):
        q, p = guide_trace.nodes[name], model_trace.nodes[name]
        assert q["value"].shape == p["value"].shape
        assert q["fn"].batch_shape == p["fn"].batch_shape == mask.shape
        assert q["fn"].event_shape == p["fn"].event_shape and len(q["fn"].event_shape) == 1
        assert [(f.name, f.dim) for f in q["cond_indep_stack"]] == [(f.name, f.dim) for f in p["cond_indep_stack"]]
        assert torch.equal(q["fn"]._mask, mask) and torch.equal(p["fn"]._mask, mask)
        assert q["log_prob"].shape == mask.shape and (q["log_prob"][~mask] == 0).all()
        with pytest.raises(NotImplementedError):  # so the ELBO must use the sampled log q - log p
            kl_divergence(q["fn"], p["fn"])


@pytest.mark.parametrize("model_name", STCN_NAMES)
def test_stcn_site_shapes(model_name):
    model = make_model(model_name, tiny_config())
    guide = _iaf(model)
    x, mask = ragged_batch((12, 7, 3))
    guide_trace, model_trace, loss = traced(model, guide, x, mask)
    assert torch.isfinite(torch.tensor(loss))
    _assert_sites_match(guide_trace, model_trace, ["z_3", "z_2", "z_1"], [mask] * 3)
    assert [guide_trace.nodes[f"z_{l}"]["value"].shape[-1] for l in (1, 2, 3)] == [4, 3, 2]


def test_ms_stcn_site_shapes():
    model = _ms_model()
    guide = _iaf(model)
    x, mask = ragged_batch((13, 6, 3))
    guide_trace, model_trace, loss = traced(model, guide, x, mask)
    assert torch.isfinite(torch.tensor(loss))
    lengths = torch.tensor([13, 6, 3]).unsqueeze(1)
    masks = [torch.arange(16 // c) < -(-lengths // c) for c in (1, 2, 4)]  # T padded to 16
    _assert_sites_match(guide_trace, model_trace, ["z_3", "z_2", "z_1"], masks[::-1])
    stacks = [guide_trace.nodes[f"z_{l}"]["cond_indep_stack"] for l in (1, 2, 3)]
    assert [[f.name for f in stack] for stack in stacks] == [["batch", f"time_{l}"] for l in (1, 2, 3)]


@pytest.mark.parametrize("model_name", ["stcn", "ms-stcn"])
def test_padding_changes_neither_loss_nor_gradient(model_name):
    model = make_model("stcn", tiny_config()) if model_name == "stcn" else _ms_model()
    guide = _iaf(model)
    params = list(model.parameters()) + list(guide.parameters())
    x, mask = ragged_batch((11, 6, 3))

    def loss_and_grads(x):
        pyro.set_rng_seed(7)
        loss = TraceMeanField_ELBO().differentiable_loss(model.model, guide, x, mask)
        return loss.item(), torch.autograd.grad(loss, params)

    loss, grads = loss_and_grads(x)
    garbage = x.clone()
    garbage[~mask] = torch.randn(int((~mask).sum()), 2) * 1e3
    garbage[2, -1] = float("nan")  # even NaN in the padding is ignored
    loss2, grads2 = loss_and_grads(garbage)
    assert loss2 == loss
    for g, g2 in zip(grads, grads2):
        torch.testing.assert_close(g, g2, rtol=0, atol=0)
    changed = x.clone()
    changed[1, 5] += 1.0  # the last real step of the second sequence does matter
    assert loss_and_grads(changed)[0] != loss


@pytest.mark.parametrize("model_name", STCN_NAMES)
def test_stcn_log_prob_is_the_change_of_variables(model_name):
    model = make_model(model_name, tiny_config())
    guide = _iaf(model)
    x, mask = ragged_batch((6, 4))
    trace = poutine.trace(guide).get_trace(x, mask)
    for name in ("z_1", "z_2", "z_3"):
        _check_density(trace.nodes[name]["fn"], mask)


def test_ms_stcn_log_prob_is_the_change_of_variables():
    model = _ms_model()
    guide = _iaf(model)
    x, mask = ragged_batch((8, 3))
    trace = poutine.trace(guide).get_trace(x, mask)
    for l in (1, 2, 3):
        site = trace.nodes[f"z_{l}"]
        _check_density(site["fn"], site["fn"]._mask)


@pytest.mark.parametrize("model_name", ["stcn-dense", "ms-stcn"])
def test_svi_with_trace_mean_field_reduces_the_loss(model_name):
    """Plain Pyro SVI (TraceMeanField_ELBO, which scores the flow by sampling) trains the
    model, the estimate and the flows; the loss is measured with fixed noise."""
    model = make_model("stcn-dense", tiny_config()) if model_name == "stcn-dense" else _ms_model()
    guide = _iaf(model)
    x, mask = ragged_batch((12, 9, 5))

    def loss() -> float:
        pyro.set_rng_seed(3)
        with torch.no_grad():
            return TraceMeanField_ELBO(num_particles=8).loss(model.model, guide, x, mask)

    flow_before = [p.detach().clone() for p in guide.flow.parameters()]
    before = loss()
    svi = SVI(model.model, guide, pyro.optim.Adam({"lr": 1e-2}), loss=TraceMeanField_ELBO())
    for _ in range(40):
        svi.step(x, mask)
    assert loss() < 0.9 * before
    assert all(not torch.equal(a, b) for a, b in zip(flow_before, guide.flow.parameters()))


def test_state_dict_holds_the_flows():
    model = make_model("stcn", tiny_config())
    guide = _iaf(model, flows=3)
    keys = guide.state_dict().keys()
    for layer in range(3):
        for k in range(3):
            assert f"flow.{layer}.{k}.nn.layers.0.weight" in keys and f"flow.{layer}.{k}.nn.permutation" in keys
    assert "flow.0.3.nn.layers.0.weight" not in keys
    assert not any(k.startswith("trunk") for k in keys)  # the model's nets are the model's
    flow_ids = {id(p) for p in guide.flow.parameters()}
    assert flow_ids and flow_ids <= {id(p) for p in guide.parameters()}
    x, mask = ragged_batch((6, 4))
    trace = poutine.trace(guide).get_trace(x, mask)
    assert "guide$$$flow.2.2.nn.layers.1.weight" in pyro.get_param_store()
    # A fresh guide given the saved state scores the same draw the same.
    fresh = IAFGuide(model, flows=3)
    fresh.load_state_dict(guide.state_dict())
    replayed = poutine.trace(poutine.replay(fresh, trace=trace)).get_trace(x, mask)
    for name in ("z_1", "z_2", "z_3"):
        value = trace.nodes[name]["value"].detach().clone()
        torch.testing.assert_close(
            replayed.nodes[name]["fn"].log_prob(value), trace.nodes[name]["fn"].log_prob(value), rtol=1e-5, atol=1e-5
        )
    ms_keys = MultiscaleIAFGuide(_ms_model()).state_dict().keys()
    assert {k for k in ms_keys if k.endswith("layers.0.weight")} == {
        f"flow.{l}.{k}.nn.layers.0.weight" for l in range(3) for k in range(2)
    }


@pytest.mark.parametrize("model_name", ["stcn", "ms-stcn"])
def test_one_dimensional_latents(model_name):
    """z_l = 1: each step is an affine map whose shift and scale come from the context
    alone; no warning, the model's shapes, the right density, a finite loss."""
    x, mask = ragged_batch((8, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if model_name == "stcn":
            model = make_model("stcn", tiny_config(z_dims=[1, 1]))
        else:
            model = _ms_model(z_dims=[1, 1, 1])
        guide = _iaf(model)
        guide_trace = poutine.trace(guide).get_trace(x, mask)
        model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x, mask)
        loss = TraceMeanField_ELBO().loss(model.model, guide, x, mask)
    assert torch.isfinite(torch.tensor(loss))
    names = [f"z_{l + 1}" for l in range(model.layers)]
    for name in names:
        q = guide_trace.nodes[name]["fn"]
        assert q.event_shape == (1,) and q.batch_shape == model_trace.nodes[name]["fn"].batch_shape
        _check_density(q, q._mask)
    step = guide.flow[0][0]
    context_dim = step.nn.context_dim
    y = torch.zeros(5, 1)
    shifted = [step.condition(torch.full((5, context_dim), c))(y) for c in (0.0, 1.0)]
    assert not torch.equal(*shifted)  # the shift depends on the context


@pytest.mark.parametrize("model_name", ["stcn-dense", "ms-stcn"])
def test_flows_start_as_the_identity(model_name):
    """A new IAF guide is the independent guide it generalises: with the same estimate
    weights and seed, the same draws and the same densities."""
    model = make_model("stcn-dense", tiny_config()) if model_name == "stcn-dense" else _ms_model()
    iaf, independent = make_guide("iaf", model), make_guide("independent", model)
    independent.load_state_dict({k: v for k, v in iaf.state_dict().items() if k.startswith("estimate")})
    x, mask = ragged_batch((8, 5))
    traces = []
    for guide in (iaf, independent):
        pyro.set_rng_seed(1)
        traces.append(poutine.trace(guide).get_trace(x, mask))
    for name in [f"z_{l + 1}" for l in range(model.layers)]:
        flow_site, gaussian_site = traces[0].nodes[name], traces[1].nodes[name]
        torch.testing.assert_close(flow_site["value"], gaussian_site["value"])
        value = flow_site["value"].detach().clone()  # a new tensor: the flow is inverted, not read from its cache
        torch.testing.assert_close(flow_site["fn"].log_prob(value), gaussian_site["fn"].log_prob(value))


def _assert_loads_as(guide, saved: dict, model) -> None:
    """A new IAF guide loaded from ``saved`` scores ``guide``'s draws as ``guide`` does."""
    x, mask = ragged_batch((6, 4))
    trace = poutine.trace(guide).get_trace(x, mask)
    loaded = make_guide("iaf", model)
    loaded.load_state_dict(saved)
    replayed = poutine.trace(poutine.replay(loaded, trace=trace)).get_trace(x, mask)
    for name in ("z_1", "z_2", "z_3"):
        value = trace.nodes[name]["value"].detach().clone()
        expected = trace.nodes[name]["fn"].log_prob(value)
        torch.testing.assert_close(replayed.nodes[name]["fn"].log_prob(value), expected, rtol=1e-5, atol=1e-5)


def test_runs_saved_with_the_stable_update_load_with_it():
    """Runs saved before the flows started at the identity used the stable update
    y = σ y + (1 - σ) m and have no ``stable_update`` entry: they load with that update
    and score a draw as they did; a run saved now loads with its own."""
    model = make_model("stcn-dense", tiny_config())
    old = _iaf(model)
    for steps in old.flow:
        for step in steps:
            step.kwargs["stable"] = True  # as IAF guides were built then
    _assert_loads_as(old, {k: v for k, v in old.state_dict().items() if k != "stable_update"}, model)
    new = make_guide("iaf", model)
    new.load_state_dict(make_guide("iaf", model).state_dict())
    assert not any(step.kwargs["stable"] for steps in new.flow for step in steps)


def test_runs_saved_with_gated_steps_load_as_the_same_flow():
    """A version of this project gated each step's (m, s) by a learned scalar; such a run
    loads with the gate folded into the output layer and scores a draw as it did."""
    model = make_model("stcn-dense", tiny_config())
    guide = _iaf(model)
    saved = guide.state_dict()
    for l, steps in enumerate(guide.flow):
        for k, step in enumerate(steps):
            gate = torch.tensor(0.5 + 0.1 * (l + k))
            last = f"flow.{l}.{k}.nn.layers.{len(step.nn.layers) - 1}"
            saved[f"flow.{l}.{k}.nn.gate"] = gate  # the gated run held g and the unscaled layer
            saved[f"{last}.weight"] = saved[f"{last}.weight"] / gate
            saved[f"{last}.bias"] = saved[f"{last}.bias"] / gate
    _assert_loads_as(guide, saved, model)
