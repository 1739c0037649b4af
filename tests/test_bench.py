"""The benchmark's yardstick and its command: the hand-written losses compute what the
Pyro objectives compute, so the printed ratios compare like with like."""

import dataclasses

import pytest
import torch

import run
from pyro_stcn.bench.handwritten import ms_stcn_independent_loss, stcn_ladder_loss
from pyro_stcn.inference.objectives import LayerwiseELBO, LinearFreeBitsELBO
from pyro_stcn.models import MS_STCN_LAYOUTS, STCNConfig
from pyro_stcn.runs.registry import make_guide, make_model


def handwriting_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 12, 3, generator=g)
    x[..., 2] = (torch.rand(3, 12, generator=g) < 0.3).float()
    mask = torch.arange(12) < torch.tensor([12, 7, 3])[:, None]
    return x * mask[..., None], mask


def stcn_dense():
    config = STCNConfig(x_dim=3, likelihood="handwriting", components=3, channels=8, blocks=2, z_dims=[4, 3, 2],
                        hidden=8)  # fmt: skip
    model = make_model("stcn-dense", config)
    return model, make_guide("ladder", model), LayerwiseELBO(), stcn_ladder_loss


def ms_stcn():
    config = dataclasses.replace(MS_STCN_LAYOUTS["iamondb"], channels=[8] * 5, z_dims=[3, 3, 2, 2, 2])
    model = make_model("ms-stcn", config)
    return model, make_guide("independent", model), LinearFreeBitsELBO(lam=0.5), ms_stcn_independent_loss


@pytest.mark.parametrize("build", [stcn_dense, ms_stcn], ids=["stcn-dense-ladder", "ms-stcn-independent"])
def test_hand_written_loss_matches_the_pyro_objective(build):
    model, guide, objective, reference = build()
    x, mask = handwriting_batch()
    params = [*model.parameters(), *guide.parameters()]
    torch.manual_seed(1)
    pyro_loss = objective.differentiable_loss(model.model, guide, x, mask)
    pyro_grads = torch.autograd.grad(pyro_loss, params, allow_unused=True)
    torch.manual_seed(1)  # the same draws
    value, surrogate = reference(model, guide, objective, x, mask)
    grads = torch.autograd.grad(surrogate, params, allow_unused=True)
    assert value.item() == pytest.approx(pyro_loss.item(), rel=1e-6)
    if isinstance(objective, LinearFreeBitsELBO):  # some units below λ: the surrogate is not the value
        assert abs(surrogate.item() - value.item()) > 1e-3
    for a, b in zip(pyro_grads, grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_bench_all_quick_prints_every_ratio(capsys):
    run.main(["bench", "all", "--quick", "--repeats", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line.split("|") for line in out.splitlines() if line.startswith("| STCN")}
    assert rows, out
    steps = next(line for line in out.splitlines() if line.startswith("| MS-STCN | 2 × 64"))
    assert float(steps.split("|")[5]) > 0  # Pyro / hand-written
    scaling = [line.split("|") for line in out.splitlines() if line.startswith("| MS-STCN |") and "×" not in line]
    assert [int(r[2]) for r in scaling] == [16, 32, 64] and float(scaling[0][4]) == 1.0
    generation = [line.split("|") for line in out.splitlines() if line.startswith("| 1 |") or line.startswith("| 4 |")]
    assert len(generation) == 2 and all(float(r[2]) > 0 and float(r[5]) > 0 for r in generation)
