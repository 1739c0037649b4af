"""Inputs normalised inside the model, log-likelihoods in data units."""

import pyro
import pytest
import torch
from pyro import poutine

from pyro_stcn.inference.objectives import LayerwiseELBO
from pyro_stcn.nets.normalise import Standardisation
from pyro_stcn.runs.registry import make_guide, make_model
from tests.conftest import ragged_batch, tiny_config
from tests.test_ms_stcn import tiny_ms

SHIFT, SCALE = [3.0, -1.0], [10.0, 0.5]


def _pair(name, config):
    """The same network twice: reading data units, and reading pre-normalised data."""
    pyro.set_rng_seed(0)
    in_units = make_model(name, config(shift=SHIFT, scale=SCALE))
    plain = make_model(name, config())
    plain.load_state_dict(in_units.state_dict())
    return in_units, plain


@pytest.mark.parametrize("name,config", [("stcn-dense", tiny_config), ("ms-stcn", lambda **kw: tiny_ms([1, 2], **kw))])
@pytest.mark.parametrize("likelihood", ["gaussian", "gmm"])
def test_data_units_differ_by_exactly_the_jacobian(name, config, likelihood):
    in_units, plain = _pair(name, lambda **kw: config(likelihood=likelihood, **kw))
    x_tilde, mask = ragged_batch((10, 6))
    x = x_tilde * torch.tensor(SCALE) + torch.tensor(SHIFT)  # the same data in its own units
    guides = [make_guide("independent", in_units), make_guide("independent", plain)]
    guides[1].load_state_dict(guides[0].state_dict())
    losses = []
    for model, guide, data in ((in_units, guides[0], x), (plain, guides[1], x_tilde)):
        pyro.set_rng_seed(1)
        losses.append(LayerwiseELBO().loss(model.model, guide, data, mask))
    jacobian = mask.sum().item() * torch.tensor(SCALE).log().sum().item()
    assert losses[0] == pytest.approx(losses[1] + jacobian, rel=1e-5)


def test_predictive_round_trip():
    """log p(x) in data units = log p̃(x̃) - Σ log scale, for the observation site."""
    in_units, _ = _pair("stcn", lambda **kw: tiny_config(likelihood="gmm", **kw))
    x_tilde, mask = ragged_batch((8,))
    x = x_tilde * torch.tensor(SCALE) + torch.tensor(SHIFT)
    site = poutine.trace(in_units.model).get_trace(x, mask).nodes["x"]
    data_units = site["fn"].log_prob(x)
    normalised = site["fn"].base_dist.base_dist.log_prob(x_tilde)  # mask, then the affine map
    torch.testing.assert_close(data_units, normalised - torch.tensor(SCALE).log().sum(), rtol=1e-5, atol=1e-5)
    samples = site["fn"].sample((4000,))[:, 0, 0]  # draws come out in data units too
    assert abs(samples[:, 0].mean() - SHIFT[0]) < 5 * SCALE[0] and samples[:, 0].std() > 1.0


def test_fit_uses_the_likelihood():
    train = [torch.tensor([[1.0, 10.0, 0.0], [3.0, 30.0, 1.0]]), torch.tensor([[5.0, 50.0, 0.0]])]
    gauss = Standardisation.fit(train, "gaussian")
    assert gauss.shift == pytest.approx([3.0, 30.0, 1 / 3]) and gauss.scale[0] == pytest.approx(2.0)
    pen = Standardisation.fit(train, "handwriting")
    offsets = torch.tensor([1.0, 10.0, 3.0, 30.0, 5.0, 50.0])
    assert pen.shift == [0.0, 0.0, 0.0] and pen.scale[2] == 1.0
    assert pen.scale[0] == pen.scale[1] == pytest.approx(offsets.std().item())
    assert Standardisation.fit(train, "bernoulli").is_identity
