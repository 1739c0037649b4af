"""MS-STCN: causality at every stride setting, shapes and masks, the ELBO against a
hand computation, the deterministic control, per-layer KL, and the shared passes."""

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from pyro.poutine.util import site_is_subsample
from torch.distributions import Normal

from pyro_stcn.data import pad_batch
from pyro_stcn.evaluation.bounds import evaluate_elbo, sequence_terms
from pyro_stcn.inference.kl import unit_kl
from pyro_stcn.inference.objectives import LayerwiseELBO, LinearFreeBitsELBO
from pyro_stcn.models import MS_STCN_LAYOUTS, MSSTCNConfig
from pyro_stcn.models.ms_stcn import default_dilations
from pyro_stcn.runs.registry import make_guide, make_model
from tests.conftest import ragged_batch, traced

STRIDES = [[1, 1, 1], [1, 2, 2], [2, 3, 1], [1, 2, 2, 2, 1], [1, 5, 5, 4, 1]]


def tiny_ms(strides, **overrides) -> MSSTCNConfig:
    n = len(strides)
    base = dict(
        x_dim=2, likelihood="gaussian", strides=strides, channels=[6] * n, z_dims=[3] * n,
        dilations=default_dilations(strides, 2),
    )  # fmt: skip
    return MSSTCNConfig(**{**base, **overrides})


def _grad_by_step(output, x):
    if not output.requires_grad:
        return torch.zeros(x.shape[1])
    (grad,) = torch.autograd.grad(output, x, retain_graph=True, allow_unused=True)
    return torch.zeros(x.shape[1]) if grad is None else grad.abs().sum((0, 2))


def _at(fn, k):
    value = torch.rand(fn.shape(), generator=torch.Generator().manual_seed(1))
    return fn.log_prob(value)[:, k].sum()


@pytest.mark.parametrize("strides", STRIDES, ids=str)
def test_causal_at_every_stride(strides):
    """The prior of layer l at coarse step k sees fine steps up to k Π_{i<=l} s_i - 1 and
    none after; the output at fine step t sees x_{t-1} and nothing from t on. T is two
    top-layer blocks plus 3, so never a multiple of the total stride."""
    model = make_model("ms-stcn", tiny_ms(strides))
    total = math.prod(strides)
    T = 2 * total + 3
    x, mask = ragged_batch((T, T))
    x.requires_grad_(True)
    trace = poutine.trace(model.model).get_trace(x, mask)
    covers = 1
    for l, s in enumerate(strides):
        covers *= s
        fn = trace.nodes[f"z_{l + 1}"]["fn"]
        steps = fn.batch_shape[-1]
        for k in sorted({0, 1, steps // 2, steps - 1}):
            grad = _grad_by_step(_at(fn, k), x)
            assert grad[k * covers :].sum() == 0, f"layer {l + 1}, coarse step {k} sees fine steps >= {k * covers}"
            if 0 < k * covers < T:  # a real coarse step after the first
                assert grad[k * covers - 1] > 0, f"layer {l + 1}, coarse step {k} misses fine step {k * covers - 1}"
    s1 = strides[0]
    for t in sorted({0, 1, total - 1, total, T - 1}):
        grad = _grad_by_step(_at(trace.nodes["x"]["fn"], t), x)
        # x_t's own bottom block of s_1 steps is hidden from it: it sees x up to that block's start
        seen = t // s1 * s1
        assert grad[seen:].sum() == 0, f"output at {t} sees x at steps >= {seen}"
        if seen > 0:
            assert grad[seen - 1] > 0, f"output at {t} misses x_{seen - 1}"


@pytest.mark.parametrize("guide_name", ["independent", "ladder"])
def test_posterior_reach(guide_name):
    """q(z^l) at coarse step k reads d^l undelayed, so it sees its own block's last fine
    step, and through the draws of the layers above nothing past the end of the top
    layer's block (4 fine steps here)."""
    model = make_model("ms-stcn", tiny_ms([1, 2, 2]))
    guide = make_guide(guide_name, model)
    x, mask = ragged_batch((16, 16))
    x.requires_grad_(True)
    trace = poutine.trace(guide).get_trace(x, mask)
    for l, covers in enumerate([1, 2, 4]):
        fn = trace.nodes[f"z_{l + 1}"]["fn"]
        for k in (0, 1, fn.batch_shape[-1] - 2):
            own_end = (k + 1) * covers - 1
            top_end = (k * covers // 4 + 1) * 4 - 1
            grad = _grad_by_step(_at(fn, k), x)
            assert grad[own_end] > 0, f"q(z_{l + 1}) at {k} misses fine step {own_end}"
            assert grad[top_end + 1 :].sum() == 0, f"q(z_{l + 1}) at {k} sees past fine step {top_end}"


@pytest.mark.parametrize("strides", [[1, 2, 2, 2, 1], [1, 5, 5, 4, 1]], ids=str)
@pytest.mark.parametrize("guide_name", ["independent", "ladder"])
def test_shapes_and_masks(strides, guide_name):
    model = make_model("ms-stcn", tiny_ms(strides))
    guide = make_guide(guide_name, model)
    lengths = (130, 77, 9)
    x, mask = ragged_batch(lengths)
    guide_trace, model_trace, loss = traced(model, guide, x, mask)
    assert torch.isfinite(torch.tensor(loss))
    total = 1
    for s in strides:
        total *= s
    t_pad = -(-130 // total) * total
    covers = 1
    for l, s in enumerate(strides):
        covers *= s
        site = model_trace.nodes[f"z_{l + 1}"]
        assert site["value"].shape == (3, t_pad // covers, 3)
        assert [f.name for f in site["cond_indep_stack"]] == ["batch", f"time_{l + 1}"]
        real = torch.tensor([-(-n // covers) for n in lengths])  # a coarse step is real if any fine step is
        expected = torch.arange(t_pad // covers) < real.unsqueeze(1)
        assert torch.equal(site["fn"]._mask, expected)
        assert (site["log_prob"][~expected] == 0).all()
    obs = model_trace.nodes["x"]
    assert obs["value"].shape == (3, t_pad, 2) and [f.name for f in obs["cond_indep_stack"]] == ["batch", "time"]
    assert (obs["log_prob"][:, 130:] == 0).all() and (obs["log_prob"][1, 77:] == 0).all()


@pytest.mark.parametrize("strides", [[1, 2, 2], [1, 1, 1]], ids=str)
def test_padding_changes_nothing(strides):
    model = make_model("ms-stcn", tiny_ms(strides))
    guide = make_guide("independent", model)
    params = list(model.parameters()) + list(guide.parameters())
    x, mask = ragged_batch((11, 6, 3))

    def loss_and_grads(x):
        pyro.set_rng_seed(4)
        loss = LinearFreeBitsELBO(lam=0.1).differentiable_loss(model.model, guide, x, mask)
        return loss.item(), torch.autograd.grad(loss, params)

    loss, grads = loss_and_grads(x)
    garbage = x.clone()
    garbage[~mask] = float("nan")
    loss2, grads2 = loss_and_grads(garbage)
    assert loss == loss2
    for g, g2 in zip(grads, grads2):
        torch.testing.assert_close(g, g2, rtol=0, atol=0)


def _gaussian_kl(mq, sq, mp, sp):
    return torch.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5


@pytest.mark.parametrize("strides", [[1, 1, 1], [1, 2, 3]], ids=str)
def test_elbo_against_hand_computation(strides):
    """The -ELBO recomputed by hand from the model's blocks, one layer and one block of
    fine steps at a time, with closed-form KLs and masks built by explicit loops. With
    all strides 1 this is a plain single-resolution model with one time axis."""
    model = make_model("ms-stcn", tiny_ms(strides))
    guide = make_guide("independent", model)
    x, mask = ragged_batch((13, 8))
    pyro.set_rng_seed(5)
    value = LayerwiseELBO().loss(model.model, guide, x, mask)

    pyro.set_rng_seed(5)
    trace = poutine.trace(guide).get_trace(x, mask)
    with torch.no_grad():
        total = strides[0] * strides[1] * strides[2]
        t_pad = -(-13 // total) * total
        xp = torch.zeros(2, t_pad, 2)
        xp[:, :13] = x * mask.unsqueeze(-1)
        fine = torch.zeros(2, t_pad, dtype=torch.bool)
        fine[:, :13] = mask
        d, h_in = [], xp.transpose(1, 2)
        for layer in model.bottom_up:
            for block in layer:
                h_in = block(h_in)
            d.append(h_in)
        kl, g, covers = 0.0, None, [strides[0], strides[0] * strides[1], total]
        for l in reversed(range(3)):
            delayed = torch.cat([torch.zeros_like(d[l][..., :1]), d[l][..., :-1]], dim=-1)
            h = model.h_nets[l](delayed if g is None else torch.cat([g, delayed], 1))
            loc_p, scale_p = model.prior.gaussian(l, h.transpose(1, 2))
            q = trace.nodes[f"z_{l + 1}"]["fn"].base_dist.base_dist
            coarse = torch.tensor(
                [
                    [bool(fine[b, k * covers[l] : (k + 1) * covers[l]].any()) for k in range(t_pad // covers[l])]
                    for b in range(2)
                ]
            )
            kl = kl + (_gaussian_kl(q.loc, q.scale, loc_p, scale_p).sum(-1) * coarse).sum()
            z = trace.nodes[f"z_{l + 1}"]["value"]
            g = model.up_nets[l](h, z.transpose(1, 2))
        p_x = model.observe.likelihood(g.transpose(1, 2)).base_dist
        log_lik = (p_x.log_prob(xp).sum(-1) * fine).sum()
    assert value == pytest.approx(float(kl - log_lik), rel=1e-5)


def test_deterministic_control():
    model = make_model("ms-stcn", tiny_ms([1, 2, 2], latent=False))
    guide = make_guide("independent", model)
    x, mask = ragged_batch((12, 5))
    with torch.no_grad():
        first = poutine.trace(model.model).get_trace(x, mask)
        second = poutine.trace(model.model).get_trace(x, mask)
    sites = [n for n, s in first.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)]
    assert sites == ["x"]
    torch.testing.assert_close(
        first.nodes["x"]["fn"].base_dist.base_dist.loc, second.nodes["x"]["fn"].base_dist.base_dist.loc, rtol=0, atol=0
    )
    # its -ELBO is the exact NLL: the same on every evaluation, with no KL
    losses = {LayerwiseELBO().loss(model.model, guide, x, mask) for _ in range(3)}
    assert len(losses) == 1
    assert len(model.prior.heads) == 0 and sum(p.numel() for p in guide.parameters()) == 0
    report = evaluate_elbo(model.model, guide, [x[0], x[1, :5]], seed=None)
    assert report.kl_per_sequence == {}


def test_per_layer_kl_adds_up_to_the_elbo():
    model = make_model("ms-stcn", tiny_ms([1, 2, 2]))
    guide = make_guide("ladder", model)
    x, mask = ragged_batch((12, 5, 9))
    elbo = LayerwiseELBO()
    pyro.set_rng_seed(3)
    loss = elbo.loss(model.model, guide, x, mask)
    pyro.set_rng_seed(3)
    log_lik, kl = sequence_terms(model.model, guide, x, mask)
    assert set(kl) == {"z_1", "z_2", "z_3"}
    for name in kl:
        assert kl[name].sum().item() == pytest.approx(float(elbo.kl[name]), rel=1e-5)
    assert loss == pytest.approx(-log_lik.sum().item() + sum(map(float, elbo.kl.values())), rel=1e-5)
    # evaluate's figures in nats per sequence are these KLs, averaged over sequences
    sequences = [x[i, : int(mask[i].sum())] for i in range(3)]
    report = evaluate_elbo(model.model, guide, sequences, seed=3)
    torch.manual_seed(3)
    log_lik, kl = sequence_terms(model.model, guide, *pad_batch(sequences))
    for name in kl:
        assert report.kl_per_sequence[name] == pytest.approx(kl[name].mean().item(), rel=1e-5)
    assert report.per_sequence == pytest.approx((sum(kl.values()) - log_lik).mean().item(), rel=1e-5)


def test_linear_free_bits_per_unit_at_each_resolution():
    """The surrogate's gradient is that of -log p(x|z) + Σ_l Σ_i f(KL^l_i) (paper 2,
    eq. A.3), with KL^l_i the closed-form KL of each unit of layer l at its own
    resolution T_l = T / Π_{k<=l} s_k, a step real if any fine step it covers is; the
    value is the true -ELBO, LayerwiseELBO's for the same draw."""
    lam = 0.05
    model = make_model("ms-stcn", tiny_ms([1, 2, 2]))
    guide = make_guide("ladder", model)
    x, mask = ragged_batch((12, 7))
    params = list(model.parameters()) + list(guide.parameters())

    def loss_and_grads(elbo):
        pyro.set_rng_seed(3)
        loss = elbo.differentiable_loss(model.model, guide, x, mask)
        return loss.item(), torch.autograd.grad(loss, params, allow_unused=True)

    loss, grads = loss_and_grads(LinearFreeBitsELBO(lam=lam))
    true_loss, true_grads = loss_and_grads(LayerwiseELBO())

    pyro.set_rng_seed(3)
    guide_trace = poutine.trace(guide).get_trace(x, mask)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x, mask)
    x_site = model_trace.nodes["x"]
    log_lik = (x_site["fn"].base_dist.log_prob(x_site["value"]) * mask).sum()
    kl_total, surrogate, units = 0.0, -log_lik, []
    for l, stride in enumerate((1, 2, 4)):  # cumulative strides of [1, 2, 2]
        name = f"z_{l + 1}"
        q = guide_trace.nodes[name]["fn"].base_dist.base_dist
        p = model_trace.nodes[name]["fn"].base_dist.base_dist
        real = mask.reshape(2, 12 // stride, stride).any(-1)  # [batch, T_l]
        kl = torch.distributions.kl_divergence(Normal(q.loc, q.scale), Normal(p.loc, p.scale))[real]
        assert kl.shape[-1] == 3 and len(kl) == int(real.sum())
        per_unit = unit_kl(guide_trace.nodes[name], model_trace.nodes[name])
        assert per_unit.shape == (2, 12 // stride, 3)
        torch.testing.assert_close(per_unit[real], kl)
        assert (per_unit[~real] == 0).all()
        kl_total = kl_total + kl.sum()
        surrogate = surrogate + torch.where(kl >= lam, kl, kl * kl.detach() / lam).sum()
        units.append(kl.flatten())
    units = torch.cat(units)
    assert (units < lam).any() and (units >= lam).any()  # both branches of eq. A.3 are exercised
    assert loss == pytest.approx(true_loss, rel=1e-6)
    assert loss == pytest.approx((kl_total - log_lik).item(), rel=1e-5)
    expected = torch.autograd.grad(surrogate, params, allow_unused=True)
    for g, r, param in zip(grads, expected, params):
        g = torch.zeros_like(param) if g is None else g
        torch.testing.assert_close(g, torch.zeros_like(param) if r is None else r, rtol=1e-4, atol=1e-6)
    assert any(not torch.allclose(g, t) for g, t in zip(grads, true_grads) if g is not None)


def test_shared_networks_run_once_per_step():
    model = make_model("ms-stcn", tiny_ms([1, 2, 2]))
    guide = make_guide("independent", model)
    calls = {"bottom_up": 0, "h": 0, "up": 0}
    model.bottom_up[0][0].register_forward_hook(lambda *_: calls.__setitem__("bottom_up", calls["bottom_up"] + 1))
    model.h_nets[0].register_forward_hook(lambda *_: calls.__setitem__("h", calls["h"] + 1))
    model.up_nets[0].register_forward_hook(lambda *_: calls.__setitem__("up", calls["up"] + 1))
    x, mask = ragged_batch((12, 7))
    svi = pyro.infer.SVI(model.model, guide, pyro.optim.Adam({"lr": 1e-3}), loss=LayerwiseELBO())
    svi.step(x, mask)
    assert calls == {"bottom_up": 1, "h": 1, "up": 1}
    with torch.no_grad():
        model.model(x, mask)  # alone, the model runs its own passes
    assert calls == {"bottom_up": 2, "h": 2, "up": 2}


def test_presets_are_paper_2_appendix_a1():
    fw2 = MS_STCN_LAYOUTS["blizzard-fw2"]
    assert fw2.strides == [1, 5, 5, 4, 1] and fw2.channels == [26, 58, 128, 256, 256]
    assert fw2.z_dims == [1, 5, 25, 64, 64] and fw2.components == 2 and fw2.dilations[-1] == [1, 2, 4, 8, 16]
    fw25 = MS_STCN_LAYOUTS["blizzard-fw25"]
    assert fw25.channels == [96, 128, 192, 256, 256] and fw25.z_dims == [24, 32, 48, 64, 64]
    assert MS_STCN_LAYOUTS["blizzard-fw200"].strides == [1, 2, 2, 2, 1]
    assert all(p.strides == [1] * 5 for n, p in MS_STCN_LAYOUTS.items() if n.endswith("-flat"))
    iam = MS_STCN_LAYOUTS["iamondb"]
    assert iam.z_dims == [8, 8, 8, 4, 2] and iam.likelihood == "handwriting" and iam.dilations[-1] == [1, 2, 4, 8]
    for preset in MS_STCN_LAYOUTS.values():
        make_model("ms-stcn", preset)  # each builds


def test_mismatched_layer_lists_are_refused():
    with pytest.raises(ValueError, match="one entry per layer in every list; strides has 3, channels has 2"):
        tiny_ms([1, 2, 2], channels=[4, 4])


def test_vectorised_particles_are_refused_clearly():
    model = make_model("ms-stcn", tiny_ms([1, 2]))
    guide = make_guide("independent", model)
    x, mask = ragged_batch((8, 5))
    elbo = TraceMeanField_ELBO(num_particles=3, vectorize_particles=True)
    with pytest.raises(NotImplementedError, match="MS-STCN draws one particle at a time"):
        elbo.loss(model.model, guide, x, mask)
    assert TraceMeanField_ELBO(num_particles=3).loss(model.model, guide, x, mask) > 0
