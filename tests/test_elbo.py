"""The ELBO subclasses: true value always, modified gradient only, exact formulas."""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from torch.distributions import Normal, kl_divergence

from pyro_stcn.evaluation.bounds import iwae_bound, sequence_terms
from pyro_stcn.inference import (
    AnnealedELBO,
    FreeBitsELBO,
    LayerwiseELBO,
    LinearFreeBitsELBO,
    make_objective,
)
from pyro_stcn.inference.kl import unit_kl
from pyro_stcn.nets.heads import join
from pyro_stcn.runs.registry import make_guide, make_model
from tests.conftest import ragged_batch, tiny_config


def _setup(likelihood="bernoulli", x_dim=2, dense=True):
    model = make_model("stcn-dense" if dense else "stcn", tiny_config(likelihood=likelihood, x_dim=x_dim))
    guide = make_guide("ladder", model)
    x, mask = ragged_batch((12, 7, 3), x_dim=x_dim)
    if likelihood == "bernoulli":
        x = (x > 0).float()
    return model, guide, x, mask


def _loss_and_grads(elbo, model, guide, x, mask, seed=3):
    params = list(model.parameters()) + list(guide.parameters())
    pyro.set_rng_seed(seed)
    loss = elbo.differentiable_loss(model.model, guide, x, mask)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.item(), [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


@pytest.mark.parametrize(
    "elbo", [LayerwiseELBO(), AnnealedELBO(beta=1.0), FreeBitsELBO(lam=0.0), LinearFreeBitsELBO(lam=0.0)]
)
def test_neutral_settings_equal_trace_mean_field(elbo):
    model, guide, x, mask = _setup()
    ref_loss, ref_grads = _loss_and_grads(TraceMeanField_ELBO(), model, guide, x, mask)
    loss, grads = _loss_and_grads(elbo, model, guide, x, mask)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("elbo", [AnnealedELBO(beta=0.3), FreeBitsELBO(lam=2.0), LinearFreeBitsELBO(lam=2.0)])
def test_value_is_true_negative_elbo_gradient_is_not(elbo):
    model, guide, x, mask = _setup()
    ref_loss, ref_grads = _loss_and_grads(TraceMeanField_ELBO(), model, guide, x, mask)
    loss, grads = _loss_and_grads(elbo, model, guide, x, mask)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert any(not torch.allclose(g, r) for g, r in zip(grads, ref_grads))


def test_beta_zero_leaves_reconstruction_only():
    model, guide, x, mask = _setup()
    params = list(model.parameters()) + list(guide.parameters())
    loss, grads = _loss_and_grads(AnnealedELBO(beta=0.0), model, guide, x, mask)

    pyro.set_rng_seed(3)
    guide_trace = poutine.trace(guide).get_trace(x, mask)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x, mask)
    reconstruction = -model_trace.nodes["x"]["fn"].log_prob(x).sum()
    ref = torch.autograd.grad(reconstruction, params, allow_unused=True)
    for g, r, p in zip(grads, ref, params):
        torch.testing.assert_close(g, torch.zeros_like(p) if r is None else r)
    true_loss, _ = _loss_and_grads(TraceMeanField_ELBO(), model, guide, x, mask)
    assert loss == pytest.approx(true_loss, rel=1e-6)  # the reported value keeps the KL


def test_linear_free_bits_formula_on_handmade_kl():
    lam = 0.5
    kl = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.9, 3.0], requires_grad=True)
    value = LinearFreeBitsELBO(lam=lam).kl_surrogate(kl)
    # KL_i where KL_i >= λ, else KL_i^2/λ in value, with gradient KL_i/λ (paper 2, eq. A.3)
    expected = sum(k**2 / lam if k < lam else k for k in kl.tolist())
    assert value.item() == pytest.approx(expected)
    (grad,) = torch.autograd.grad(value, kl)
    torch.testing.assert_close(grad, torch.tensor([0.0, 0.2, 0.5, 1.0, 1.0, 1.0]))


def test_linear_free_bits_never_pushes_a_negative_monte_carlo_kl_up():
    """A sampled log q - log p can be negative; its gradient weight is 0, not negative."""
    kl = torch.tensor([-0.3, -0.01, 0.2], requires_grad=True)
    (grad,) = torch.autograd.grad(LinearFreeBitsELBO(lam=0.5).kl_surrogate(kl), kl)
    torch.testing.assert_close(grad, torch.tensor([0.0, 0.0, 0.4]))


def test_free_bits_formula_on_handmade_kl():
    kl = torch.tensor([0.1, 0.5, 0.9], requires_grad=True)
    value = FreeBitsELBO(lam=0.5).kl_surrogate(kl)
    assert value.item() == pytest.approx(0.5 + 0.5 + 0.9)
    (grad,) = torch.autograd.grad(value, kl)
    assert grad[0] == 0 and grad[2] == 1


def _gaussian_kl(mq, sq, mp, sp):
    return torch.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5


@pytest.mark.parametrize("dense", [True, False])
def test_elbo_value_against_hand_computation(dense):
    """-ELBO from the guide's draws, re-derived without Pyro's ELBO machinery: closed-form
    Gaussian KLs and a hand-written Bernoulli log-likelihood, masked by hand."""
    model, guide, x, mask = _setup(dense=dense)
    pyro.set_rng_seed(5)
    value = LayerwiseELBO().loss(model.model, guide, x, mask)

    pyro.set_rng_seed(5)
    trace = poutine.trace(guide).get_trace(x, mask)
    with torch.no_grad():
        feats = model.trunk(x, mask)
        m = mask.float().unsqueeze(-1)
        zs, kl, z_above = [], 0.0, None
        for layer in reversed(range(model.layers)):
            q = trace.nodes[f"z_{layer + 1}"]["fn"].base_dist.base_dist
            z = trace.nodes[f"z_{layer + 1}"]["value"]
            loc_p, scale_p = model.prior.gaussian(layer, join(feats.d_prev[layer], z_above))
            kl = kl + (_gaussian_kl(q.loc, q.scale, loc_p, scale_p) * m).sum()
            zs.insert(0, z)
            z_above = z
        h = torch.cat(zs, -1) if dense else zs[0]
        logits = model.observe.likelihood.proj(model.observe.output(h))
        log_lik = x * torch.nn.functional.logsigmoid(logits) + (1 - x) * torch.nn.functional.logsigmoid(-logits)
        expected = -(log_lik * m).sum() + kl
    assert value == pytest.approx(float(expected), rel=1e-5)


def test_layer_kl_is_recorded_and_adds_up():
    model, guide, x, mask = _setup()
    elbo = LayerwiseELBO()
    pyro.set_rng_seed(2)
    loss = elbo.loss(model.model, guide, x, mask)
    assert set(elbo.kl) == {"z_1", "z_2", "z_3"}
    pyro.set_rng_seed(2)
    log_lik, kl = sequence_terms(model.model, guide, x, mask)
    for name, value in kl.items():
        assert elbo.kl[name] == pytest.approx(value.sum().item(), rel=1e-5)
    assert loss == pytest.approx(-log_lik.sum().item() + sum(map(float, elbo.kl.values())), rel=1e-5)


def test_masked_steps_add_no_kl():
    model, guide, x, mask = _setup()
    guide_trace = poutine.trace(guide).get_trace(x, mask)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x, mask)
    kl = unit_kl(guide_trace.nodes["z_1"], model_trace.nodes["z_1"])
    assert kl.shape == (3, 12, 4)
    assert (kl[~mask] == 0).all() and (kl[mask] > 0).all()


@pytest.mark.parametrize("dense", [True, False])
def test_gaussian_unit_kl_is_torch_kl_divergence(dense):
    """Between Gaussians the KL stays analytic and per unit: torch's closed form on the
    sites' loc and scale, ``[batch, time, z_dim]``, padded steps 0."""
    model, guide, x, mask = _setup(dense=dense)
    guide_trace = poutine.trace(guide).get_trace(x, mask)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x, mask)
    for layer, z_dim in enumerate(model.config.z_dims):
        name = f"z_{layer + 1}"
        q = guide_trace.nodes[name]["fn"].base_dist.base_dist
        p = model_trace.nodes[name]["fn"].base_dist.base_dist
        expected = kl_divergence(Normal(q.loc, q.scale), Normal(p.loc, p.scale)) * mask.unsqueeze(-1)
        kl = unit_kl(guide_trace.nodes[name], model_trace.nodes[name])
        assert kl.shape == (3, 12, z_dim)
        torch.testing.assert_close(kl, expected, rtol=0, atol=0)


def test_iwae_bound_is_at_least_the_elbo_and_rises_with_k():
    model, guide, x, mask = _setup()
    pyro.set_rng_seed(0)
    bound_64, log_w = iwae_bound(model.model, guide, x, mask, samples=64)
    # The mean log weight is a Monte Carlo -ELBO; it must agree with the analytic-KL one.
    with torch.no_grad():
        terms = [sequence_terms(model.model, guide, x, mask) for _ in range(64)]
    analytic = torch.stack([sum(kl.values(), -log_lik) for log_lik, kl in terms])  # [64, batch]
    stderr = ((log_w.var(0) + analytic.var(0)) / 64).sqrt()
    assert ((-log_w.mean(0) - analytic.mean(0)).abs() < 4 * stderr).all()
    # The bound sits above the ELBO by more than Monte Carlo error, and rises with K.
    assert (-bound_64 < analytic.mean(0) - 4 * stderr).all()
    # Fresh draws for K = 8: on average between the ELBO (K = 1) and the K = 64 bound.
    bound_8 = torch.stack([iwae_bound(model.model, guide, x, mask, samples=8)[0] for _ in range(16)])
    assert log_w.mean(0).sum() < bound_8.mean(0).sum() < bound_64.sum()


def test_unknown_objective_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown objective 'kl'.*elbo, annealed, free-bits, linear-free-bits"):
        make_objective("kl")
