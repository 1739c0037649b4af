"""Opt-in bfloat16 autocast: the networks narrow, every density and the loss float32."""

import dataclasses

import pyro
import pytest
import torch
from pyro import poutine

from pyro_stcn.elbo import LayerwiseELBO
from pyro_stcn.models import MS_STCN_LAYOUTS
from pyro_stcn.precision import network_autocast
from pyro_stcn.registry import make_guide, make_model
from tests.conftest import ragged_batch, tiny_config


def stcn():
    model = make_model("stcn-dense", tiny_config(likelihood="gmm", components=3))
    return model, make_guide("ladder", model), ragged_batch()


def ms_stcn():
    config = dataclasses.replace(MS_STCN_LAYOUTS["iamondb"], channels=[8] * 5, z_dims=[3, 3, 2, 2, 2])
    model = make_model("ms-stcn", config)
    x, mask = ragged_batch(x_dim=3)
    x[..., 2] = (x[..., 2] > 0).float()
    return model, make_guide("independent", model), (x * mask[..., None], mask)


@pytest.mark.parametrize("build", [stcn, ms_stcn], ids=["stcn-dense-ladder", "ms-stcn-independent"])
def test_bfloat16_networks_float32_densities(build):
    model, guide, (x, mask) = build()
    torch.manual_seed(0)
    full = LayerwiseELBO().differentiable_loss(model.model, guide, x, mask)
    with network_autocast("cpu"):
        torch.manual_seed(0)
        guide_trace = poutine.trace(guide).get_trace(x, mask)
        model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x, mask)
        torch.manual_seed(0)
        mixed = LayerwiseELBO().differentiable_loss(model.model, guide, x, mask)
    for trace in (guide_trace, model_trace):
        trace.compute_log_prob()
        names = [n for n in trace.stochastic_nodes + trace.observation_nodes if n.startswith(("z_", "x"))]
        assert len(names) == model.layers + (trace is model_trace)  # z_L .. z_1, and x in the model
        for name in names:
            assert trace.nodes[name]["log_prob"].dtype == torch.float32, name
            assert trace.nodes[name]["value"].dtype == torch.float32, name
    with network_autocast("cpu"):  # the networks did run narrow
        features = model.features.compute(x, mask)
    d = features.d_prev[0] if hasattr(features, "d_prev") else features.d[0]
    assert d.dtype == torch.bfloat16
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed)
    assert mixed.item() == pytest.approx(full.item(), rel=0.05)  # bfloat16 networks: close, not equal
    mixed.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_disabled_autocast_changes_nothing():
    model, guide, (x, mask) = stcn()
    torch.manual_seed(0)
    plain = LayerwiseELBO().differentiable_loss(model.model, guide, x, mask)
    with network_autocast("cpu", enabled=False):
        torch.manual_seed(0)
        assert LayerwiseELBO().differentiable_loss(model.model, guide, x, mask).item() == plain.item()
    pyro.clear_param_store()
