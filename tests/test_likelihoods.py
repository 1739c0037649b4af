"""Each likelihood is a proper density whose samples follow its log_prob."""

import pytest
import torch

from pyro_stcn.guides import precision_weighted
from pyro_stcn.nets.likelihoods import PenStroke, diagonal_gmm, make_likelihood

N = 200_000


def _head(name, x_dim, components=3):
    torch.manual_seed(0)
    head = make_likelihood(name, in_dim=4, x_dim=x_dim, components=components)
    with torch.no_grad():
        return head(torch.randn(1, 1, 4))  # batch [1, 1]


@pytest.mark.parametrize("name", ["gaussian", "gmm"])
def test_one_dimensional_densities_integrate_to_one(name):
    d = _head(name, 1)
    grid = torch.linspace(-40, 40, 400_001).reshape(-1, 1, 1, 1)
    density = d.log_prob(grid).exp().squeeze()
    assert float(torch.trapezoid(density, grid.squeeze())) == pytest.approx(1.0, abs=1e-4)


def test_bernoulli_sums_to_one():
    d = _head("bernoulli", 1)
    total = d.log_prob(torch.zeros(1, 1, 1)).exp() + d.log_prob(torch.ones(1, 1, 1)).exp()
    assert float(total) == pytest.approx(1.0, abs=1e-6)


def test_handwriting_density_integrates_to_one():
    d = _head("handwriting", 3, components=2)
    axis = torch.linspace(-25, 25, 801)
    dx, dy = torch.meshgrid(axis, axis, indexing="ij")
    total = 0.0
    for pen in (0.0, 1.0):
        value = torch.stack([dx, dy, torch.full_like(dx, pen)], -1).reshape(-1, 1, 1, 3)
        density = d.log_prob(value).exp().reshape(801, 801)
        total += float(torch.trapezoid(torch.trapezoid(density, axis), axis))
    assert total == pytest.approx(1.0, abs=1e-3)


def _moments_match(samples, mean, var):
    torch.testing.assert_close(samples.mean(0), mean, atol=0.03 * (1 + var.sqrt().max()), rtol=0.02)
    torch.testing.assert_close(samples.var(0), var, atol=0.03 * (1 + var.max()), rtol=0.03)


def test_gaussian_and_bernoulli_samples_match_parameters():
    g = _head("gaussian", 3)
    base = g.base_dist
    _moments_match(g.sample((N,)), base.loc, base.scale**2)
    b = _head("bernoulli", 3)
    p = b.base_dist.probs
    _moments_match(b.sample((N,)), p, p * (1 - p))


def test_gmm_samples_match_mixture_moments():
    d = _head("gmm", 2, components=3)
    pi = d.mixture_distribution.probs.unsqueeze(-1)  # [1, 1, K, 1]
    loc, scale = d.component_distribution.base_dist.loc, d.component_distribution.base_dist.scale
    mean = (pi * loc).sum(-2)
    var = (pi * (scale**2 + loc**2)).sum(-2) - mean**2
    _moments_match(d.sample((N,)), mean, var)


def test_gmm_shares_one_component_across_dimensions():
    """Two well-separated components at (-3, -3) and (3, 3): with one shared choice the
    dims are strongly correlated; independent choices would leave them uncorrelated."""
    d = diagonal_gmm(torch.zeros(2), torch.tensor([[-3.0, -3.0], [3.0, 3.0]]), torch.full((2, 2), 0.5))
    s = d.sample((N,))
    corr = torch.corrcoef(s.T)[0, 1]
    assert corr > 0.95
    assert d.log_prob(torch.tensor([3.0, 3.0])) > d.log_prob(torch.tensor([3.0, -3.0])) + 10


def test_handwriting_samples_match_parameters():
    d = _head("handwriting", 3, components=2)
    assert isinstance(d, PenStroke)
    s = d.sample((N,))
    assert set(s[..., 2].unique().tolist()) <= {0.0, 1.0}
    assert float(s[..., 2].mean()) == pytest.approx(float(d.pen.probs), abs=0.01)
    pi = d.offsets.mixture_distribution.probs.unsqueeze(-1)
    loc = d.offsets.component_distribution.base_dist.loc
    torch.testing.assert_close(s[..., :2].mean(0), (pi * loc).sum(-2), atol=0.05, rtol=0.02)


def test_observation_scales_are_clamped():
    head = make_likelihood("gaussian", in_dim=1, x_dim=1, components=1)
    with torch.no_grad():
        head.proj.bias.copy_(torch.tensor([0.0, -100.0]))
        assert float(head(torch.zeros(1, 1, 1)).base_dist.scale) == pytest.approx(1e-3)
        head.proj.bias.copy_(torch.tensor([0.0, 100.0]))
        assert float(head(torch.zeros(1, 1, 1)).base_dist.scale) == pytest.approx(5.0)


def test_unknown_likelihood_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'; valid: bernoulli, gaussian, gmm, handwriting"):
        make_likelihood("poisson", 4, 1, components=1)


def test_precision_weighting_is_the_product_of_two_gaussians():
    """N(x; μa, σa) N(x; μb, σb) ∝ N(x; μ, σ): their log ratio is constant in x, and
    (μ, σ) is the textbook closed form."""
    torch.manual_seed(0)
    loc_a, loc_b = torch.randn(5, 1), torch.randn(5, 1)
    scale_a, scale_b = torch.rand(5, 1) + 0.2, torch.rand(5, 1) + 0.2
    loc, scale = precision_weighted(loc_a, scale_a, loc_b, scale_b)
    var_a, var_b = scale_a**2, scale_b**2
    torch.testing.assert_close(loc, (loc_a * var_b + loc_b * var_a) / (var_a + var_b))
    torch.testing.assert_close(scale, (var_a * var_b / (var_a + var_b)).sqrt())
    grid = torch.linspace(-3, 3, 50)
    normal = torch.distributions.Normal
    ratio = normal(loc_a, scale_a).log_prob(grid) + normal(loc_b, scale_b).log_prob(grid)
    ratio = ratio - normal(loc, scale).log_prob(grid)
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), atol=1e-4, rtol=0)
