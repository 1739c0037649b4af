"""Posterior predictive checks: Predictive's replicates, the statistics, p-values."""

import pytest
import torch

from pyro_stcn.evaluation.predictive import lag1_autocorrelation, one_step_ahead, posterior_predictive_check, statistics
from pyro_stcn.models import MSSTCNConfig
from pyro_stcn.runs.registry import make_guide, make_model
from tests.conftest import ragged_batch, tiny_config


def _stcn(likelihood="gaussian", x_dim=2):
    model = make_model("stcn-dense", tiny_config(likelihood=likelihood, x_dim=x_dim))
    return model, make_guide("ladder", model)


def _ms_stcn():
    config = MSSTCNConfig(x_dim=2, likelihood="gaussian", strides=[1, 2], channels=[6, 6], z_dims=[2, 2],
                          dilations=[[1, 1], [1, 2]])  # fmt: skip
    model = make_model("ms-stcn", config)
    return model, make_guide("independent", model)


@pytest.mark.parametrize("build", [_stcn, _ms_stcn])
def test_one_step_ahead_replicates_have_the_data_shape(build):
    """Site ``x`` of every replicate, ``[replicates, batch, time, x_dim]``; padded steps,
    even NaN, leave the real steps' replicates finite."""
    model, guide = build()
    x, mask = ragged_batch((7, 5, 3), x_dim=2)
    x = x.masked_fill(~mask[..., None], float("nan"))
    reps = one_step_ahead(model.model, guide, x, mask, replicates=4)
    assert reps.shape == (4, 3, 7, 2)
    assert torch.isfinite(reps[:, mask]).all()
    assert not torch.equal(reps[0], reps[1])  # fresh draws of z and x per replicate


def test_one_step_ahead_conditions_on_the_real_history():
    """Replicates at t follow x_{<t}: changing only the last real step leaves every
    earlier step's replicate unchanged (same seed)."""
    model, guide = _stcn()
    x, mask = ragged_batch((6,), x_dim=2)
    torch.manual_seed(0)
    a = one_step_ahead(model.model, guide, x, mask, replicates=2)
    changed = x.clone()
    changed[:, 5] += 3.0
    torch.manual_seed(0)
    b = one_step_ahead(model.model, guide, changed, mask, replicates=2)
    assert torch.allclose(a[:, :, :5], b[:, :, :5]) and not torch.allclose(a[:, :, 5], b[:, :, 5])


def test_statistics_by_hand():
    mask = torch.tensor([[True, True, True, True, False]])
    x = torch.tensor([[[1.0, 0, 0], [3.0, 2, 1], [1.0, 0, 0], [3.0, 2, 1], [99.0, 99, 1]]])
    stats = statistics("strokes")
    assert stats["mean"](x, mask) == pytest.approx(1.5)  # dx and dy of the 4 real steps
    assert stats["pen-up rate"](x, mask) == pytest.approx(0.5)
    assert stats["mean stroke length (steps)"](x, mask) == pytest.approx(2.0)
    signal = torch.tensor([[[1.0], [-1.0], [1.0], [-1.0], [5.0]]])
    assert lag1_autocorrelation(signal, mask) == pytest.approx(-1.0)  # the padded 5 is not seen
    # speech: frames of consecutive samples are one waveform; other data keep channels apart
    frames = torch.tensor([[[1.0, -1.0], [1.0, -1.0]]])
    two = torch.ones(1, 2, dtype=torch.bool)
    assert statistics("audio")["lag-1 autocorrelation"](frames, two) == pytest.approx(-1.0)
    assert statistics("sequence")["lag-1 autocorrelation"](frames, two) == pytest.approx(1.0)
    images = torch.tensor([[[1.0], [1.0], [0.0], [0.0]], [[1.0], [0.0], [0.0], [0.0]]])
    full = torch.ones(2, 4, dtype=torch.bool)
    assert statistics("image")["pixel density"](images, full) == pytest.approx(3 / 8)
    assert statistics("image")["variance of density across images"](images, full) == pytest.approx(0.03125)


def test_an_obvious_misfit_gets_an_extreme_p_value():
    """All-ink images against an untrained model (about half ink): p = 0 for density."""
    model, guide = _stcn("bernoulli", 1)
    sequences = [torch.ones(16, 1) for _ in range(8)]
    rows = posterior_predictive_check(model, guide, sequences, "image", replicates=5)
    density = next(r for r in rows if r.statistic == "pixel density")
    assert density.real == 1.0 and density.p_value == {"one-step-ahead": 0.0, "free-running": 0.0}
    assert all(v.shape == (5,) for v in density.replicated.values())
