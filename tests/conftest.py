import warnings

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO

from pyro_stcn.models import STCNConfig


@pytest.fixture(autouse=True)
def fresh_pyro():
    """Each test starts with an empty param store, validation on, and a fixed seed."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def tiny_config(**overrides) -> STCNConfig:
    """A small STCN: 3 layers of 2 blocks (receptive field 10), 8 channels."""
    base = dict(x_dim=2, likelihood="gaussian", z_dims=[4, 3, 2], channels=8, blocks=2, hidden=8)
    return STCNConfig(**{**base, **overrides})


def ragged_batch(lengths=(12, 7, 3), x_dim=2, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian-noise sequences of the given lengths, padded, with their mask."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), x_dim, generator=g)
    mask = torch.arange(max(lengths)) < torch.tensor(lengths).unsqueeze(1)
    return x * mask.unsqueeze(-1), mask


def traced(model, guide, x: torch.Tensor, mask: torch.Tensor) -> tuple:
    """(guide trace, model trace replayed against it, mean-field loss), log densities
    computed, with every warning an error (e.g. Pyro's mean-field ordering warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        guide_trace = poutine.trace(guide).get_trace(x, mask)
        model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x, mask)
        model_trace.compute_log_prob()
        guide_trace.compute_log_prob()
        loss = TraceMeanField_ELBO().loss(model.model, guide, x, mask)
    return guide_trace, model_trace, loss


def loss_and_grads_at(model, guide, x: torch.Tensor, mask: torch.Tensor, latents: dict) -> tuple:
    """-ELBO of one draw with the latents fixed to ``latents`` (site name -> value), and
    its gradient for every parameter of model and guide (each once)."""
    drawn = poutine.trace(guide).get_trace(x, mask)
    for name, value in latents.items():
        drawn.nodes[name]["value"] = value
    guide_trace = poutine.trace(poutine.replay(guide, trace=drawn)).get_trace(x, mask)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x, mask)
    loss = guide_trace.log_prob_sum() - model_trace.log_prob_sum()
    params = list({id(p): p for m in (model, guide) for p in m.parameters()}.values())
    return loss, torch.autograd.grad(loss, params)


def latents_of(guide, x: torch.Tensor, mask: torch.Tensor) -> dict:
    """One draw of every latent site ``z_*`` of ``guide``, detached."""
    trace = poutine.trace(guide).get_trace(x, mask)
    return {name: site["value"].detach() for name, site in trace.nodes.items() if name.startswith("z_")}
