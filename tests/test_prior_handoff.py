"""The ladder guide hands the prior's (μ, σ) to the model: the prior networks run once
per step, and the loss and gradients are those of running them twice."""

import torch

from pyro_stcn.inference.objectives import LayerwiseELBO
from pyro_stcn.runs.registry import make_guide, make_model
from tests.conftest import ragged_batch, tiny_config


def counted(model) -> list[int]:
    calls = [0]
    for head in model.prior.heads:
        head.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def loss_and_grads(model, guide, x, mask):
    params = [*model.parameters(), *guide.parameters()]
    torch.manual_seed(5)
    loss = LayerwiseELBO().differentiable_loss(model.model, guide, x, mask)
    return loss, torch.autograd.grad(loss, params, allow_unused=True)


def test_prior_runs_once_per_step_with_the_same_numbers():
    model = make_model("stcn-dense", tiny_config())
    guide = make_guide("ladder", model)
    calls = counted(model)
    x, mask = ragged_batch()
    loss, grads = loss_and_grads(model, guide, x, mask)
    assert calls[0] == model.layers  # once per layer, in the guide
    model.priors.for_model = lambda *args: None  # refuse every handoff: the model computes its own
    calls[0] = 0
    again, again_grads = loss_and_grads(model, guide, x, mask)
    assert calls[0] == 2 * model.layers
    assert loss.item() == again.item()
    for a, b in zip(grads, again_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_no_handoff_after_a_parameter_update_or_to_a_lone_model_run():
    model = make_model("stcn-dense", tiny_config())
    guide = make_guide("ladder", model)
    x, mask = ragged_batch()
    calls = counted(model)
    guide(x, mask)
    with torch.no_grad():
        model.prior.heads[0].loc[0].weight.add_(0.0)  # an in-place update bumps the version
    model.model(x, mask)  # its own z below the top; at the top, the same inputs but a changed prior
    assert calls[0] == 2 * model.layers
    calls[0] = 0
    model.model(x, mask)  # no guide ran before: everything computed afresh
    assert calls[0] == model.layers
