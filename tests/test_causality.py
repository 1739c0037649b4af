"""No output at step t may depend on x at or after t (model), nor the posterior at t
on x after t (guide). Checked with gradients of each step's outputs w.r.t. x."""

import pytest
import torch
from pyro import poutine

from pyro_stcn.runs.registry import make_guide, make_model
from tests.conftest import ragged_batch, tiny_config

T = 12
CASES = [(m, g, p) for m in ("stcn", "stcn-dense") for g in ("ladder", "independent") for p in ("dynamic", "standard")]


def _params_at(fn, t: int) -> torch.Tensor:
    """A scalar that changes with every parameter of ``fn`` at step t: the log density
    of a fixed point."""
    g = torch.Generator().manual_seed(1)
    value = torch.rand(fn.shape(), generator=g)
    return fn.log_prob(value)[:, t].sum()


def _grad_by_step(output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """|d output / d x| summed over batch and channels: one number per step."""
    if not output.requires_grad:  # e.g. the N(0, I) prior, which sees no x at all
        return torch.zeros(x.shape[1])
    (grad,) = torch.autograd.grad(output, x, retain_graph=True, allow_unused=True)
    return torch.zeros(x.shape[1]) if grad is None else grad.abs().sum((0, 2))


@pytest.mark.parametrize("model_name,guide_name,prior", CASES)
def test_model_and_guide_are_causal(model_name, guide_name, prior):
    model = make_model(model_name, tiny_config(prior=prior))
    guide = make_guide(guide_name, model)
    x, mask = ragged_batch((T, T))
    x.requires_grad_(True)
    guide_trace = poutine.trace(guide).get_trace(x, mask)
    model_trace = poutine.trace(model.model).get_trace(x, mask)
    for t in range(T):
        for name in ("x", "z_1", "z_2", "z_3"):
            grad = _grad_by_step(_params_at(model_trace.nodes[name]["fn"], t), x)
            assert grad[t:].sum() == 0, f"model site {name} at step {t} depends on x at steps >= {t}"
        for name in ("z_1", "z_2", "z_3"):
            grad = _grad_by_step(_params_at(guide_trace.nodes[name]["fn"], t), x)
            assert grad[t + 1 :].sum() == 0, f"posterior {name} at step {t} depends on x after {t}"


def test_gradient_check_sees_dependence():
    """The check above is not vacuous: the prior sees x_{<t}, the posterior sees x_t."""
    model = make_model("stcn-dense", tiny_config())
    guide = make_guide("ladder", model)
    x, mask = ragged_batch((T, T))
    x.requires_grad_(True)
    t = 5
    model_trace = poutine.trace(model.model).get_trace(x, mask)
    assert _grad_by_step(_params_at(model_trace.nodes["z_1"]["fn"], t), x)[t - 1] > 0
    assert _grad_by_step(_params_at(model_trace.nodes["x"]["fn"], t), x)[t - 1] > 0
    guide_trace = poutine.trace(guide).get_trace(x, mask)
    assert _grad_by_step(_params_at(guide_trace.nodes["z_1"]["fn"], t), x)[t] > 0


def test_trunk_exposes_prev_and_cur():
    """d_prev at t has seen exactly x_{<t} and d_cur at t exactly x_{<=t}, within the
    receptive field."""
    model = make_model("stcn", tiny_config())
    x, mask = ragged_batch((T,))
    x.requires_grad_(True)
    feats = model.trunk(x, mask)
    rf = model.trunk.receptive_field
    t = 11
    for layer in range(model.layers):
        prev = _grad_by_step(feats.d_prev[layer][:, t].sum(), x)
        cur = _grad_by_step(feats.d_cur[layer][:, t].sum(), x)
        assert prev[t:].sum() == 0 and prev[t - 1] > 0
        assert cur[t + 1 :].sum() == 0 and cur[t] > 0
    assert rf == 1 + 3 * (2**2 - 1)
    top = _grad_by_step(feats.d_cur[-1][:, t].sum(), x)
    first_seen = t - (rf - 1)  # d_cur at t sees rf steps: x_{t-rf+1} .. x_t
    assert top[:first_seen].sum() == 0 and top[first_seen] > 0
