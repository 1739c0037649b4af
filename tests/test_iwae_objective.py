"""Training on the per-step importance-weighted bound: its value and gradient against an
independent computation, K = 1 against Pyro's Trace_ELBO, one trunk pass for K draws,
a falling loss, the command line, and clear refusals."""

import json
import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch.distributions import Normal

from pyro_stcn import cli as run
from pyro_stcn.inference import make_objective
from pyro_stcn.inference.importance import ImportanceWeightedELBO
from pyro_stcn.nets.heads import join
from pyro_stcn.runs.registry import make_guide, make_model
from tests.conftest import ragged_batch, tiny_config
from tests.test_baselines import tiny
from tests.test_cli import TOY
from tests.test_ms_stcn import tiny_ms


def _stcn(guide="ladder"):
    model = make_model("stcn-dense", tiny_config())
    return model, make_guide(guide, model)


def _independent_log_weights(model, guide, x, mask, drawn: dict) -> torch.Tensor:
    """log w_{k,n,t} = log p(x_t, z_t | x_{<t}) - log q(z_t | x) ``[K, batch, time]`` in
    plain torch from the networks, at the guide's draws ``drawn`` (``[K, batch, time,
    z_l]`` per site), each rebuilt as μ_q + σ_q ε so that gradients flow as in the
    reparameterised objective."""
    feats = model.trunk_features(x, mask)
    log_w, zs, z_above = 0.0, [], None
    for layer in reversed(range(model.layers)):
        loc_q, scale_q = guide.posterior(layer, feats, z_above)
        eps = ((drawn[f"z_{layer + 1}"] - loc_q) / scale_q).detach()
        z = loc_q + scale_q * eps
        loc_p, scale_p = model.prior.gaussian(layer, join(feats.d_prev[layer], z_above))
        log_w = log_w + Normal(loc_p, scale_p).log_prob(z).sum(-1) - Normal(loc_q, scale_q).log_prob(z).sum(-1)
        zs.insert(0, z)
        z_above = z
    log_w = log_w + model.observation(zs).log_prob(x)
    return torch.where(mask, log_w, 0.0)


def _params(model, guide):
    return [p for m in (model, guide) for p in m.parameters()]


def _drawn(recorded) -> dict:
    return {name: site["value"] for name, site in recorded.trace.nodes.items() if name.startswith("z_")}


def test_value_is_the_elbo_estimate_and_gradient_that_of_the_per_step_bound():
    model, guide = _stcn()
    x, mask = ragged_batch((12, 7, 3))
    objective = ImportanceWeightedELBO(samples=4, kl_gradient="pathwise")
    recorded = poutine.trace(guide)  # the same draws, read back
    loss = objective.differentiable_loss(model.model, recorded, x, mask)
    drawn = _drawn(recorded)
    assert all(z.shape[:3] == (4, 3, 12) for z in drawn.values())  # K draws of every step
    log_w = _independent_log_weights(model, guide, x, mask, drawn)  # [K, batch, time]
    torch.testing.assert_close(loss.detach(), -log_w.sum((1, 2)).mean().detach())  # the -ELBO estimate
    bound = (log_w.logsumexp(0) - math.log(4)).sum()
    assert bound > log_w.sum((1, 2)).mean()  # the bound is tighter than the estimate the value reports
    params = _params(model, guide)
    expected = torch.autograd.grad(-bound, params, allow_unused=True)
    for got, want in zip(torch.autograd.grad(loss, params, allow_unused=True), expected):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert set(objective.kl) == {"z_1", "z_2", "z_3"} and all(v > 0 for v in objective.kl.values())


def test_one_sample_follows_the_elbo_gradient():
    model, guide = _stcn()
    x, mask = ragged_batch((12, 7, 3))
    params = _params(model, guide)
    pyro.set_rng_seed(5)
    iwae = ImportanceWeightedELBO(samples=1, kl_gradient="pathwise").differentiable_loss(model.model, guide, x, mask)
    pyro.set_rng_seed(5)
    elbo = Trace_ELBO(max_plate_nesting=2).differentiable_loss(model.model, guide, x, mask)
    torch.testing.assert_close(iwae, elbo)
    for got, want in zip(torch.autograd.grad(iwae, params), torch.autograd.grad(elbo, params)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_the_trunk_runs_once_for_all_draws():
    model, guide = _stcn()
    calls = []
    model.trunk.register_forward_hook(lambda *_: calls.append(1))
    x, mask = ragged_batch((12, 7, 3))
    ImportanceWeightedELBO(samples=6).differentiable_loss(model.model, guide, x, mask).backward()
    assert len(calls) == 1


def test_it_trains_under_plain_pyro_svi():
    model, guide = _stcn("independent")
    x, mask = ragged_batch((12, 7, 3))
    svi = pyro.infer.SVI(model.model, guide, pyro.optim.Adam({"lr": 0.01}), make_objective("iwae", samples=3))
    losses = [svi.step(x, mask) for _ in range(40)]
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])


def test_models_that_cannot_are_refused_with_the_reason():
    x, mask = ragged_batch((12, 7, 3))
    vrnn, vrnn_guide = tiny("vrnn")
    with pytest.raises(ValueError, match="latents do not factorise over time given x"):
        ImportanceWeightedELBO(samples=3).differentiable_loss(vrnn.model, vrnn_guide, x, mask)
    ms = make_model("ms-stcn", tiny_ms([1, 2, 2]))
    with pytest.raises(ValueError, match="draws its 3 samples in parallel.*one particle at a time"):
        ImportanceWeightedELBO(samples=3).differentiable_loss(ms.model, make_guide("ladder", ms), x, mask)
    with pytest.raises(ValueError, match="positive number of samples, got 0"):
        ImportanceWeightedELBO(samples=0)


def test_command_line_trains_on_it_and_refuses_what_does_not_fit(tmp_path, capsys):
    out = tmp_path / "iw"
    run.main(["train", *TOY, "--objective", "iwae", "--iw-samples", "3", "--out", str(out), "--no-progress",
              "--device", "cpu"])  # fmt: skip
    assert json.loads((out / "config.json").read_text())["iw_samples"] == 3
    printed = capsys.readouterr().out
    assert "by iwae" in printed and "test: -ELBO = " in printed
    assert "kl_z_1" in (out / "log.csv").read_text().splitlines()[0]
    with pytest.raises(SystemExit, match="--objective iwae does not fit --model vrnn: .*do not factorise"):
        run.main(["train", "--model", "vrnn", "--objective", "iwae", "--out", str(tmp_path / "v"), "--device", "cpu"])
    with pytest.raises(SystemExit, match="--iw-samples applies to --objective iwae, not linear-free-bits"):
        run.main(["train", "--iw-samples", "3", "--out", str(tmp_path / "e"), "--device", "cpu"])
