"""Bad input gets a clear error that says what was wrong and what was expected."""

import pyro
import pytest
import torch

from pyro_stcn.models import VRNNConfig
from pyro_stcn.models.priors import make_prior
from pyro_stcn.runs.registry import make_guide, make_model
from tests.conftest import ragged_batch, tiny_config


@pytest.fixture
def stcn():
    model = make_model("stcn", tiny_config())
    return model, make_guide("ladder", model)


def test_wrong_rank(stcn):
    model, guide = stcn
    x, mask = ragged_batch()
    with pytest.raises(ValueError, match=r"x must be a tensor of shape \[batch, time, 2\], got \(3, 12\)"):
        guide(x[..., 0], mask)
    with pytest.raises(ValueError, match=r"x must be a tensor of shape \[batch, time, 2\], got \(12, 2\)"):
        model.model(x[0], mask[0])


def test_wrong_channel_count(stcn):
    model, _ = stcn
    x, mask = ragged_batch(x_dim=3)
    with pytest.raises(ValueError, match=r"x has 3 channels \(shape \(3, 12, 3\)\); the model expects 2"):
        model.model(x, mask)


def test_nan_in_real_steps(stcn):
    model, guide = stcn
    x, mask = ragged_batch()
    x[1, 4, 0] = float("nan")
    x[2, 1, 1] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or inf at sequence 1, step 4 \(and 1 more steps\)"):
        guide(x, mask)


def test_mask_shape_mismatch(stcn):
    model, _ = stcn
    x, mask = ragged_batch()
    with pytest.raises(ValueError, match=r"mask must have shape \[batch, time\] = \(3, 12\) to match x, got \(3, 11\)"):
        model.model(x, mask[:, :-1])


def test_mask_dtype_and_gaps(stcn):
    model, _ = stcn
    x, mask = ragged_batch()
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        model.model(x, mask.float())
    gappy = mask.clone()
    gappy[0, 5] = False
    with pytest.raises(ValueError, match="mask row 0 has a gap"):
        model.model(x, gappy)


@pytest.mark.parametrize(
    "make,name,valid",
    [
        (lambda n: make_model(n, tiny_config()), "srnn", "wavenet, wavenet-dense, rnn, vrnn, stcn, stcn-dense"),
        (lambda n: make_guide(n, make_model("stcn", tiny_config())), "mean-field", "ladder, independent"),
        (lambda n: make_prior(n, 8, [2], 8), "flow", "dynamic, standard"),
    ],
)
def test_unknown_names_list_the_valid_ones(make, name, valid):
    """A misspelt or missing name lists the valid ones."""
    with pytest.raises(ValueError, match=f"unknown (model|guide|prior) '{name}'; valid: {valid}"):
        make(name)


def test_the_model_being_run_owns_its_param_store_names():
    """Two models under one name: plain pyro.module would hand SVI the first one's
    tensors and silently leave the second untrained."""
    first = make_model("stcn", tiny_config())
    second = make_model("stcn", tiny_config())
    x, mask = ragged_batch()
    first.model(x, mask)
    before = [p.detach().clone() for p in second.parameters()]
    svi = pyro.infer.SVI(
        second.model, make_guide("ladder", second), pyro.optim.Adam({"lr": 0.1}), pyro.infer.Trace_ELBO()
    )
    svi.step(x, mask)
    assert all(not torch.equal(b, p) for b, p in zip(before, second.parameters()))


def test_a_guide_that_does_not_fit_the_model_says_which_do():
    with pytest.raises(ValueError, match="guide 'ladder' does not fit a VRNN; it takes vrnn"):
        make_guide("ladder", make_model("vrnn", VRNNConfig(x_dim=2, likelihood="gaussian", hidden=8, z_dim=2)))
    with pytest.raises(ValueError, match="guide 'vrnn' does not fit a STCN; it takes ladder or independent"):
        make_guide("vrnn", make_model("stcn", tiny_config()))


def test_runs_saved_before_the_observation_module_still_load():
    """Older checkpoints named the output net ``output.*`` and its head ``likelihood.*``."""
    model = make_model("stcn", tiny_config())
    old = {k.replace("observe.", ""): v for k, v in model.state_dict().items()}
    assert "output.0.0.weight" in old and "likelihood.proj.weight" in old
    fresh = make_model("stcn", tiny_config())
    fresh.load_state_dict(old)
    for (name, p), q in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(p, q), name
