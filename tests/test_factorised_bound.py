"""The factorised importance-weighted bound: between the ELBO and the exact log p(x),
closer with K, never below the sequence-level bound in expectation; each model's
``factor_steps`` checked against its networks; MS-STCN's blocks grouped as by hand;
refused where the latents do not factorise."""

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from pyro_stcn.evaluation.bounds import (
    factor_log_weights,
    factorised_iwae_bound,
    iwae_bound,
    sequence_terms,
    trace_pair,
)
from pyro_stcn.inference.factors import factor_label, factor_steps_of, trace_log_weights
from pyro_stcn.runs.api import bound_factor_steps
from pyro_stcn.runs.registry import make_guide, make_model
from tests.conftest import ragged_batch, tiny_config
from tests.test_baselines import tiny
from tests.test_bounds import _exact_log_likelihood, _setup
from tests.test_ms_stcn import tiny_ms


def _elbo(model, guide, x, mask, draws: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    """The ELBO per sequence (analytic KL) from ``draws`` posterior draws, and its standard error."""
    with torch.no_grad():
        log_lik, kl = sequence_terms(model.model, guide, x.repeat(draws, 1, 1), mask.repeat(draws, 1))
    elbo = (log_lik - sum(kl.values())).reshape(draws, len(x))
    return elbo.mean(0), elbo.std(0) / math.sqrt(draws)


def test_per_step_bound_lies_between_the_elbo_and_log_p_and_closes_with_k():
    """One latent unit per step: log p(x) by quadrature (tests/test_bounds.py). One
    realisation of a bound may exceed log p(x); its expectation may not, so each K is
    averaged over 32 seeds (summed over the 3 sequences) and compared within 4
    standard errors."""
    model, guide, x, mask = _setup(z_dims=[1])
    exact = float(_exact_log_likelihood(model, x, mask).sum())
    elbo, elbo_se = _elbo(model, guide, x, mask)
    elbo, elbo_se = float(elbo.sum()), float(elbo_se.square().sum().sqrt())
    mean, se = {}, {}
    for k in (4, 64, 1024):
        runs = []
        for seed in range(32):
            pyro.set_rng_seed(seed)
            runs.append(factorised_iwae_bound(model.model, guide, x, mask, k, factor_steps=1, chunk=1024).sum())
        mean[k], se[k] = float(torch.stack(runs).mean()), float(torch.stack(runs).std() / math.sqrt(32))
    assert exact - elbo > 2  # a real gap to close
    assert mean[4] - elbo > 4 * math.hypot(se[4], elbo_se)  # above the ELBO
    assert mean[64] - mean[4] > 4 * math.hypot(se[4], se[64])  # closer with K
    assert mean[1024] <= exact + 4 * se[1024]  # a bound on log p(x)
    assert exact - mean[1024] < 0.05 * (exact - elbo)  # K = 1024 draws per step: within 5% of the gap


def test_per_step_bound_is_not_below_the_sequence_bound_in_expectation():
    """Averaged over 24 seeds and 3 sequences, K = 8: the per-step bound is the tighter,
    by far more than its Monte Carlo error."""
    model, guide, x, mask = _setup()
    differences = []
    for seed in range(24):
        pyro.set_rng_seed(seed)
        per_step = factorised_iwae_bound(model.model, guide, x, mask, 8, factor_steps=1, chunk=8)
        pyro.set_rng_seed(seed)
        sequence, _ = iwae_bound(model.model, guide, x, mask, 8, chunk=8)
        differences.append(per_step - sequence)
    differences = torch.stack(differences).flatten()
    assert differences.mean() > 4 * differences.std() / math.sqrt(len(differences))


def test_the_sequence_level_bound_is_the_one_factor_case():
    model, guide, x, mask = _setup()
    pyro.set_rng_seed(3)
    bound, _ = iwae_bound(model.model, guide, x, mask, 16, chunk=5)
    pyro.set_rng_seed(3)
    torch.testing.assert_close(factorised_iwae_bound(model.model, guide, x, mask, 16, None, chunk=5), bound)


def _hand_grouped_log_weights(model_trace, guide_trace, time: int, block: int) -> torch.Tensor:
    """log w per block of ``block`` fine steps, grouped by each site step's fine-step
    position: coarse step k of a site with T_s steps starts at fine step k · T / T_s."""
    blocks = -(-time // block)
    log_w = torch.zeros(model_trace.nodes["x"]["log_prob"].shape[0], blocks)
    for sign, trace in ((1, model_trace), (-1, guide_trace)):
        for site in trace.nodes.values():
            if site["type"] == "sample":
                steps = site["log_prob"].shape[-1]
                start = torch.arange(steps) * (blocks * block // steps)
                log_w.index_add_(1, start // block, sign * site["log_prob"])
    return log_w


@pytest.mark.parametrize("strides,time", [([1, 2, 2], 10), ([2, 3, 1], 13), ([1, 2, 2], 4)])
def test_ms_stcn_blocks_are_grouped_as_by_hand(strides, time):
    model = make_model("ms-stcn", tiny_ms(strides)).eval()
    guide = make_guide("ladder", model)
    assert model.factor_steps == math.prod(strides)
    x, mask = ragged_batch((time, time - 3, 2))
    pyro.set_rng_seed(1)
    with torch.no_grad():
        grouped = factor_log_weights(model.model, guide, x, mask, model.factor_steps)
        pyro.set_rng_seed(1)
        guide_trace, model_trace = trace_pair(model.model, guide, x, mask)
    torch.testing.assert_close(grouped, _hand_grouped_log_weights(model_trace, guide_trace, time, model.factor_steps))
    if time <= model.factor_steps:  # a single block: the sequence-level bound, draw for draw
        pyro.set_rng_seed(2)
        sequence, _ = iwae_bound(model.model, guide, x, mask, 6, chunk=4)
        pyro.set_rng_seed(2)
        torch.testing.assert_close(
            factorised_iwae_bound(model.model, guide, x, mask, 6, model.factor_steps, 4), sequence
        )


def _stcn(guide):
    model = make_model("stcn-dense", tiny_config())
    return model, make_guide(guide, model)


def _ms_stcn(guide):
    model = make_model("ms-stcn", tiny_ms([1, 2, 2]))
    return model, make_guide(guide, model)


@pytest.mark.parametrize(
    "build,guide", [(_stcn, "ladder"), (_stcn, "iaf"), (_ms_stcn, "ladder"), (_ms_stcn, "independent")]
)
def test_each_factor_depends_only_on_its_own_latents(build, guide):
    """What ``factor_steps`` claims, checked on the networks: the log weight of a factor
    (model and guide together) has zero gradient in the latents of every other factor,
    and a non-zero one in its own."""
    model, guide = build(guide)
    x, mask = ragged_batch((11, 11))
    z = {
        name: site["value"].detach().requires_grad_()
        for name, site in prune_subsample_sites(poutine.trace(guide).get_trace(x, mask)).nodes.items()
        if site["type"] == "sample"
    }
    guide_trace = prune_subsample_sites(poutine.trace(poutine.condition(guide, data=z)).get_trace(x, mask))
    model_trace = prune_subsample_sites(poutine.trace(poutine.condition(model.model, data=z)).get_trace(x, mask))
    guide_trace.compute_log_prob(), model_trace.compute_log_prob()
    steps = factor_steps_of(model.model)
    log_w = trace_log_weights(model_trace, guide_trace, steps)  # [batch, F]
    factors = log_w.shape[-1]
    assert factors == -(-11 // steps)
    for f in range(factors):
        grads = torch.autograd.grad(log_w[:, f].sum(), list(z.values()), retain_graph=True, allow_unused=True)
        for name, grad in zip(z, grads):
            by_factor = grad.abs().sum((0, -1)).reshape(factors, -1).sum(-1)  # [F]
            assert by_factor[f] > 0, f"{name}: factor {f} does not depend on its own latents"
            assert (by_factor[torch.arange(factors) != f] == 0).all(), f"{name}: factor {f} reads other factors"


def test_factor_steps_of_every_built_in_model():
    assert factor_steps_of(make_model("stcn", tiny_config()).model) == 1
    assert factor_steps_of(make_model("ms-stcn", tiny_ms([1, 2, 3]))) == 6
    assert factor_steps_of(tiny("rnn")[0]) == factor_steps_of(tiny("wavenet")[0]) == 1
    assert factor_steps_of(tiny("vrnn")[0].model) is None
    assert factor_steps_of(lambda x, mask: None) is None  # a model that says nothing does not factorise
    assert [factor_label(s) for s in (None, 1, 8)] == ["per sequence", "per step", "per block of 8 steps"]


def test_the_vrnn_bound_is_per_sequence_and_per_factor_is_refused():
    vrnn, _ = tiny("vrnn")
    assert bound_factor_steps(vrnn, "auto") is None and bound_factor_steps(vrnn, "sequence") is None
    with pytest.raises(ValueError, match="latents of a VRNN do not factorise over time given x.*iw_over sequence"):
        bound_factor_steps(vrnn, "factors")
    stcn = make_model("stcn", tiny_config())
    assert bound_factor_steps(stcn, "auto") == bound_factor_steps(stcn, "factors") == 1
    assert bound_factor_steps(stcn, "sequence") is None
    with pytest.raises(ValueError, match="unknown iw_over 'steps'; valid: auto, factors, sequence"):
        bound_factor_steps(stcn, "steps")


def test_deterministic_models_bound_is_exact_per_step():
    model, guide = tiny("wavenet")
    x, mask = ragged_batch((12, 7, 3))
    with torch.no_grad():
        log_lik, _ = sequence_terms(model.model, guide, x, mask)
    torch.testing.assert_close(factorised_iwae_bound(model.model, guide, x, mask, 3, factor_steps=1), log_lik)
