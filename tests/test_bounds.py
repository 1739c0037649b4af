"""The importance-weighted bound: chunked draws, ≥ the ELBO, and close to the exact
log-likelihood where that can be computed by quadrature."""

import pyro
import pytest
import torch

from pyro_stcn.evaluation.bounds import evaluate_elbo, evaluate_iwae, iwae_bound, sequence_terms
from pyro_stcn.nets.masks import zero_padding
from pyro_stcn.runs.registry import make_guide, make_model
from tests.conftest import ragged_batch, tiny_config


def _setup(z_dims=None, likelihood="gaussian", x_dim=2):
    pyro.clear_param_store()
    torch.manual_seed(0)
    config = tiny_config(likelihood=likelihood, x_dim=x_dim)
    if z_dims is not None:
        config.z_dims = z_dims
    model = make_model("stcn-dense", config).eval()
    guide = make_guide("ladder", model).eval()
    x, mask = ragged_batch((12, 7, 3), x_dim=x_dim)
    return model, guide, x, mask


@pytest.mark.parametrize("chunk", [1, 16, 64])
def test_chunked_log_weights_belong_to_their_sequences(chunk):
    """Tiled draws are reshaped draw-major: each column's mean log weight is that
    sequence's ELBO (lengths 12, 7 and 3 give very different ones)."""
    model, guide, x, mask = _setup()
    pyro.set_rng_seed(0)
    bound, log_w = iwae_bound(model.model, guide, x, mask, samples=64, chunk=chunk)
    assert log_w.shape == (64, 3)
    with torch.no_grad():
        terms = [sequence_terms(model.model, guide, x, mask) for _ in range(64)]
    elbo = torch.stack([log_lik - sum(kl.values()) for log_lik, kl in terms])  # [64, batch]
    stderr = ((log_w.var(0) + elbo.var(0)) / 64).sqrt()
    assert ((log_w.mean(0) - elbo.mean(0)).abs() < 4 * stderr).all()
    assert (bound > log_w.mean(0)).all()


def _exact_log_likelihood(model, x, mask, grid: int = 4001) -> torch.Tensor:
    """log p(x) per sequence for an STCN with one latent layer of one unit: given x_{<t}
    the steps are independent, so log p(x) = Σ_t log ∫ p(z_t | d_{t-1}) p(x_t | z_t) dz_t,
    each a 1-D integral done on a grid of ±10 prior standard deviations."""
    with torch.no_grad():
        d_prev = model.trunk_features(x, mask).d_prev
        loc, scale = model.prior.gaussian(0, d_prev[0])  # [batch, time, 1]
        u = torch.linspace(-10, 10, grid)
        z = loc + scale * u[:, None, None, None]  # [grid, batch, time, 1]
        log_prior = torch.distributions.Normal(loc, scale).log_prob(z)[..., 0]
        log_lik = model.observation([z]).log_prob(zero_padding(x, mask))  # [grid, batch, time]
        du = float(u[1] - u[0])
        per_step = (log_prior + log_lik).logsumexp(0) + torch.log(scale[..., 0] * du)
        return (per_step * mask).sum(-1)


def test_iwae_approaches_the_exact_log_likelihood():
    model, guide, x, mask = _setup(z_dims=[1])
    exact = -float(_exact_log_likelihood(model, x, mask).mean())  # -log p(x), nats per sequence
    assert abs(exact + float(_exact_log_likelihood(model, x, mask, grid=40001).mean())) < 1e-2  # converged
    sequences = [x[i, : int(mask[i].sum())] for i in range(3)]
    elbo = evaluate_elbo(model.model, guide, sequences).per_sequence
    iwae = evaluate_iwae(model.model, guide, sequences, samples=20_000, chunk=2_000).per_sequence
    # -ELBO > -IWAE ≥ -log p(x) (up to Monte Carlo error), and the bound closes the gap
    assert elbo - exact > 0.5
    assert iwae >= exact - 0.01
    assert iwae - exact < 0.1 * (elbo - exact)


def test_iwae_does_not_decrease_with_k():
    model, guide, x, mask = _setup()
    sequences = [x[i, : int(mask[i].sum())] for i in range(3)]
    bounds = [evaluate_iwae(model.model, guide, sequences, samples=k, chunk=8, seed=k).per_sequence for k in (1, 8, 64)]
    assert bounds[0] > bounds[1] > bounds[2]  # -IWAE: each K a tighter upper bound on -log p(x)
