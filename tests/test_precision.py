"""Opt-in bfloat16 autocast: the networks narrow, every density and the loss float32."""

import csv
import dataclasses
import json
import math

import pyro
import pytest
import torch
from pyro import poutine

from pyro_stcn.inference.objectives import LayerwiseELBO
from pyro_stcn.models import MS_STCN_LAYOUTS
from pyro_stcn.nets.precision import network_autocast
from pyro_stcn.runs.registry import make_guide, make_model
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


# -- --bf16: training steps under network_autocast ------------------------------------

TINY = {"steps": 3, "valid_every": 3, "channels": [8], "hidden": 8, "z_dims": [4, 2], "blocks": 2, "batch_size": 16,
        "valid_sequences": 20}  # fmt: skip


@pytest.fixture(scope="module")
def digits():
    from pyro_stcn.data import load_digits_splits

    return load_digits_splits()


def _train(run_dir, digits, **settings):
    from pyro_stcn import runs

    run_config, data = runs.new_run_config({**TINY, **settings}, data=digits)
    model, guide = runs.start_run(run_config, run_dir)
    runs.train_run(run_config, model, guide, data, run_dir, callbacks=[])
    return model, guide


def _losses(run_dir) -> list[float]:
    with open(run_dir / "log.csv", newline="") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def test_a_bf16_run_trains_with_float32_parameters_close_to_a_float32_run(digits, tmp_path):
    model, guide = _train(tmp_path / "bf16", digits, bf16=True)
    _train(tmp_path / "fp32", digits)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["train"]["bf16"] is True
    assert json.loads((tmp_path / "fp32" / "config.json").read_text())["train"]["bf16"] is False
    assert all(p.dtype == torch.float32 for m in (model, guide) for p in m.parameters())
    narrow, full = _losses(tmp_path / "bf16"), _losses(tmp_path / "fp32")
    assert len(narrow) == 3 and all(math.isfinite(loss) for loss in narrow)
    # the same weights and draws at step 1: only the networks' rounding differs
    assert narrow[0] != full[0] and narrow[0] == pytest.approx(full[0], rel=0.01)


def test_the_bf16_flag_reaches_the_run_config(digits):
    from pyro_stcn import cli, runs

    for argv, expected in ((["train", "--bf16"], True), (["train"], False)):
        settings = cli.settings_of(cli.parser().parse_args(argv), quiet=True)
        run_config, _ = runs.new_run_config(settings, data=digits)
        assert run_config.train.bf16 is expected


def test_a_config_from_before_bf16_resumes_in_float32(digits, tmp_path):
    from pyro_stcn import runs

    _train(tmp_path, digits)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["train"]["bf16"]  # as older versions wrote it
    (tmp_path / "config.json").write_text(json.dumps(config))
    run_config, model, guide = runs.resume_run(tmp_path, steps=4)
    result = runs.train_run(run_config, model, guide, runs.load_data(run_config), tmp_path, callbacks=[])
    assert result.last_step == 4 and run_config.train.bf16 is False
    assert len(_losses(tmp_path)) == 4 and math.isfinite(_losses(tmp_path)[-1])
