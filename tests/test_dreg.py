"""DReG (Tucker, Lawson, Gu & Maddison 2019) for the importance-weighted objective: its
gradient against a hand computation on a small STCN, and on the one-latent-unit model
an expected gradient equal to the plain IWAE gradient's with a lower variance for the
guide, at K = 5 and 50."""

import math

import pyro
import pytest
import torch
from pyro import poutine
from torch.distributions import Normal

from pyro_stcn.inference.importance import ImportanceWeightedELBO
from pyro_stcn.nets.heads import join
from pyro_stcn.runs.registry import make_guide, make_model
from tests.conftest import ragged_batch, tiny_config
from tests.test_bounds import _setup as _one_unit_setup


def _log_weights(model, guide, x, mask, zs: dict, with_q: bool = True) -> torch.Tensor:
    """log p(x_t, z_t | x_{<t}) - log q(z_t | x) per draw, sequence and step ``[K, batch,
    time]`` in plain torch from the networks, at the latents ``zs`` by site name
    (``[K, batch, time, z_l]``); without ``with_q`` the model's part alone."""
    feats = model.trunk_features(x, mask)
    log_w, z_above = 0.0, None
    for layer in reversed(range(model.layers)):
        z = zs[f"z_{layer + 1}"]
        loc_p, scale_p = model.prior.gaussian(layer, join(feats.d_prev[layer], z_above))
        log_w = log_w + Normal(loc_p, scale_p).log_prob(z).sum(-1)
        if with_q:
            log_w = log_w - Normal(*guide.posterior(layer, feats, z_above)).log_prob(z).sum(-1)
        z_above = z
    log_w = log_w + model.observation([zs[f"z_{l + 1}"] for l in range(model.layers)]).log_prob(x)
    return torch.where(mask, log_w, 0.0)


def _frozen_copies(model, guide, guide_name: str) -> tuple:
    """New networks with the values of ``model`` and ``guide``, every parameter fixed."""
    frozen_model = make_model("stcn-dense", model.config)
    frozen_model.load_state_dict(model.state_dict())
    frozen_guide = make_guide(guide_name, frozen_model)
    frozen_guide.load_state_dict(guide.state_dict())
    for p in [*frozen_model.parameters(), *frozen_guide.parameters()]:
        p.requires_grad_(False)
    return frozen_model, frozen_guide


def _dreg_by_hand(model, guide, guide_name: str, x, mask, drawn: dict) -> tuple:
    """The gradient of the negated objective, (model's parameters, guide's), each part
    computed on its own:

    - the guide's: Σ_{k,t} w̃² ∂_z log w · ∂z/∂φ, with ∂_z log w taken by autograd at leaf
      z on frozen copies of the networks (so every parameter is held fixed in q and in
      p), and z = μ_q + σ_q ε rebuilt top-down with the live networks from the draws;
    - the model's: the plain gradient of the bound Σ_t log (1/K) Σ_k w_{k,t}."""
    frozen_model, frozen_guide = _frozen_copies(model, guide, guide_name)
    feats, live, z_above = model.trunk_features(x, mask), {}, None
    for layer in reversed(range(model.layers)):
        name = f"z_{layer + 1}"
        loc, scale = guide.posterior(layer, feats, z_above)
        z_above = live[name] = loc + scale * ((drawn[name] - loc) / scale).detach()
    leaves = {name: z.detach().requires_grad_() for name, z in live.items()}
    log_w = _log_weights(frozen_model, frozen_guide, x, mask, leaves)
    w = torch.softmax(log_w.detach(), dim=0)
    dlogw_dz = torch.autograd.grad((w**2 * log_w).sum(), list(leaves.values()))
    through_draws = sum((g * live[name]).sum() for name, g in zip(leaves, dlogw_dz))
    guide_grads = torch.autograd.grad(-through_draws, list(guide.parameters()), retain_graph=True)
    bound = (_log_weights(model, guide, x, mask, live).logsumexp(0) - math.log(len(w))).sum()
    model_grads = torch.autograd.grad(-bound, list(model.parameters()), allow_unused=True)
    return model_grads, guide_grads


@pytest.mark.parametrize("guide_name", ["ladder", "independent"])
def test_gradient_equals_a_hand_computation(guide_name):
    """The guide's parameters get DReG's gradient, the model's (the shared trunk and, for
    the ladder, the prior the guide precision-weights with) the bound's own."""
    model = make_model("stcn-dense", tiny_config())
    guide = make_guide(guide_name, model)
    x, mask = ragged_batch((12, 7, 3))
    model_params, guide_params = list(model.parameters()), list(guide.parameters())
    recorded = poutine.trace(guide)  # the draws, read back
    loss = ImportanceWeightedELBO(samples=4).differentiable_loss(model.model, recorded, x, mask)
    drawn = {name: site["value"] for name, site in recorded.trace.nodes.items() if name.startswith("z_")}
    expected = [g for group in _dreg_by_hand(model, guide, guide_name, x, mask, drawn) for g in group]
    got = torch.autograd.grad(loss, model_params + guide_params, allow_unused=True)
    for g, e, p in zip(got, expected, model_params + guide_params):
        torch.testing.assert_close(torch.zeros_like(p) if g is None else g, torch.zeros_like(p) if e is None else e,
                                   rtol=1e-4, atol=1e-5)  # fmt: skip
    pyro.set_rng_seed(0)
    recorded = poutine.trace(guide)
    plain = ImportanceWeightedELBO(samples=4, kl_gradient="pathwise")
    plain_grads = torch.autograd.grad(plain.differentiable_loss(model.model, recorded, x, mask), guide_params)
    assert any(not torch.allclose(a, b) for a, b in zip(plain_grads, got[len(model_params) :]))  # not the plain one


def test_value_is_the_plain_objectives_to_the_bit():
    model = make_model("stcn-dense", tiny_config())
    guide = make_guide("ladder", model)
    x, mask = ragged_batch((12, 7, 3))
    values = []
    for kl_gradient in ("dreg", "pathwise"):
        pyro.set_rng_seed(2)
        values.append(ImportanceWeightedELBO(samples=3, kl_gradient=kl_gradient).differentiable_loss(
            model.model, guide, x, mask).item())  # fmt: skip
    assert values[0] == values[1]


def _guide_gradients(kl_gradient: str, samples: int, draws: int) -> torch.Tensor:
    """The guide's gradient ``[draws, guide parameters]`` of the importance-weighted
    objective on the one-latent-unit model, one row per seed."""
    model, guide, x, mask = _one_unit_setup(z_dims=[1])
    objective = ImportanceWeightedELBO(samples=samples, kl_gradient=kl_gradient)
    rows = []
    for seed in range(draws):
        pyro.set_rng_seed(seed)
        loss = objective.differentiable_loss(model.model, guide, x, mask)
        rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(guide.parameters()))]))
    return torch.stack(rows)


@pytest.mark.parametrize("samples", [5, 50])
def test_guide_gradient_has_the_plain_mean_and_a_lower_variance(samples):
    """Same seeds, same draws: the paired difference has mean 0 along 6 fixed random
    directions (within 4 standard errors over 64 draws), and DReG's total variance is
    below the plain gradient's."""
    dreg, plain = _guide_gradients("dreg", samples, 64), _guide_gradients("pathwise", samples, 64)
    directions = torch.randn(dreg.shape[1], 6, generator=torch.Generator().manual_seed(0))
    projected = (dreg - plain) @ directions
    mean, se = projected.mean(0), projected.std(0) / math.sqrt(len(projected))
    assert (mean.abs() < 4 * se).all(), (mean / se).tolist()
    assert dreg.var(0).sum() < plain.var(0).sum()
