"""Site shapes under validation, for a batch of different lengths, and masking:
padded steps change neither the loss nor its gradient."""

import pyro
import pytest
import torch
from pyro.infer import Predictive, TraceMeanField_ELBO
from pyro.poutine.util import site_is_subsample

from pyro_stcn.inference.objectives import LinearFreeBitsELBO
from pyro_stcn.runs.registry import make_guide, make_model
from tests.conftest import ragged_batch, tiny_config, traced

LENGTHS = (12, 7, 3)


@pytest.mark.parametrize("model_name", ["stcn", "stcn-dense"])
@pytest.mark.parametrize("guide_name", ["ladder", "independent"])
@pytest.mark.parametrize("likelihood,x_dim", [("gaussian", 2), ("bernoulli", 2), ("gmm", 2), ("handwriting", 3)])
def test_site_shapes(model_name, guide_name, likelihood, x_dim):
    model = make_model(model_name, tiny_config(likelihood=likelihood, x_dim=x_dim, components=3))
    guide = make_guide(guide_name, model)
    x, mask = ragged_batch(LENGTHS, x_dim=x_dim)
    if likelihood == "handwriting":
        x[..., 2] = (x[..., 2] > 0).float()
    if likelihood == "bernoulli":
        x = (x > 0).float()
    guide_trace, model_trace, loss = traced(model, guide, x, mask)
    assert torch.isfinite(torch.tensor(loss))
    latents = [
        n
        for n, s in model_trace.nodes.items()
        if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
    ]
    assert latents == ["z_3", "z_2", "z_1"]  # top-down, one site per layer
    for name, z_dim in zip(latents, [2, 3, 4]):
        for trace in (guide_trace, model_trace):
            site = trace.nodes[name]
            assert site["value"].shape == (3, 12, z_dim)
            assert site["fn"].batch_shape == (3, 12) and site["fn"].event_shape == (z_dim,)
            assert site["log_prob"].shape == (3, 12)
            assert [f.name for f in site["cond_indep_stack"]] == ["batch", "time"]
            assert [f.dim for f in site["cond_indep_stack"]] == [-2, -1]
    obs = model_trace.nodes["x"]
    assert obs["is_observed"] and obs["fn"].batch_shape == (3, 12) and obs["fn"].event_shape == (x_dim,)
    assert (obs["log_prob"][~mask] == 0).all()


@pytest.mark.parametrize("model_name", ["stcn", "stcn-dense"])
def test_padding_changes_neither_loss_nor_gradient(model_name):
    model = make_model(model_name, tiny_config())
    guide = make_guide("ladder", model)
    params = list(model.parameters()) + list(guide.parameters())
    x, mask = ragged_batch(LENGTHS)

    def loss_and_grads(x):
        pyro.set_rng_seed(7)
        loss = LinearFreeBitsELBO(lam=0.1).differentiable_loss(model.model, guide, x, mask)
        return loss, torch.autograd.grad(loss, params)

    loss, grads = loss_and_grads(x)
    garbage = x.clone()
    garbage[~mask] = torch.randn(int((~mask).sum()), 2) * 1e3
    garbage[2, -1] = float("nan")  # even NaN in the padding is ignored
    loss2, grads2 = loss_and_grads(garbage)
    assert float(loss2) == float(loss)
    for g, g2 in zip(grads, grads2):
        torch.testing.assert_close(g, g2, rtol=0, atol=0)
    # and the real steps do matter
    changed = x.clone()
    changed[1, 6] += 1.0
    loss3, _ = loss_and_grads(changed)
    assert float(loss3) != float(loss)


def test_vectorized_particles_and_predictive():
    """A particle dim on the left of every site: Pyro's vectorised ELBO and Predictive."""
    model = make_model("stcn-dense", tiny_config())
    guide = make_guide("ladder", model)
    x, mask = ragged_batch(LENGTHS)
    pyro.set_rng_seed(0)
    vectorised = TraceMeanField_ELBO(num_particles=200, vectorize_particles=True).loss(model.model, guide, x, mask)
    pyro.set_rng_seed(1)
    single = [TraceMeanField_ELBO().loss(model.model, guide, x, mask) for _ in range(200)]
    spread = torch.tensor(single).std() / 200**0.5
    assert abs(vectorised - sum(single) / 200) < 5 * spread
    predictive = Predictive(model.model, guide=guide, num_samples=5, parallel=True, return_sites=["z_1", "z_3"])
    samples = predictive(x, mask)
    assert samples["z_1"].shape == (5, 3, 12, 4) and samples["z_3"].shape == (5, 3, 12, 2)


def test_crop_and_pad_never_let_a_padded_step_into_the_loss():
    """Crops of long sequences padded beside short ones: the mask covers exactly the real
    steps, every cropped window is a real slice, and the loss equals the sum of each
    sequence's own loss (so padded steps add nothing)."""
    from pyro_stcn.data.batching import shuffled_batches

    g = torch.Generator().manual_seed(0)
    sequences = [torch.randn(n, 2, generator=g) for n in (30, 4, 17, 9)]
    x, mask = next(shuffled_batches(sequences, batch_size=4, seed=0, crop=10))
    assert sorted(mask.sum(1).tolist()) == [4, 9, 10, 10]
    for row, m in zip(x, mask):
        window = row[m]
        assert any(
            torch.equal(window, s[i : i + len(window)]) for s in sequences for i in range(len(s) - len(window) + 1)
        )
        assert (row[~m] == 0).all()
    # A guide so sharp (σ = 1e-3) that its draws are its means: then the batch's -ELBO
    # must equal the sum of each sequence's -ELBO at its own length.
    model = make_model("stcn", tiny_config())
    guide = make_guide("independent", model)
    for head in guide.estimate:
        torch.nn.init.zeros_(head.scale[-1].weight)
        torch.nn.init.constant_(head.scale[-1].bias, -30.0)
    elbo = TraceMeanField_ELBO()
    with torch.no_grad():
        whole = elbo.loss(model.model, guide, x, mask)
        parts = [
            elbo.loss(model.model, guide, x[i : i + 1, :n], mask[i : i + 1, :n]) for i, n in enumerate(mask.sum(1))
        ]
    assert whole == pytest.approx(sum(parts), rel=1e-4)
