"""CUDA: the same training step on the GPU (run with ``-m gpu`` on a machine with one)."""

import pyro
import pytest
import torch

from pyro_stcn.guides import make_guide
from pyro_stcn.models import make_model
from pyro_stcn.elbo import LinearFreeBitsELBO
from pyro_stcn.evaluate import evaluate_elbo
from tests.conftest import ragged_batch, tiny_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def test_svi_evaluation_and_sampling_on_cuda():
    model = make_model("stcn-dense", tiny_config()).cuda()
    guide = make_guide("ladder", model).cuda()
    x, mask = (t.cuda() for t in ragged_batch())
    svi = pyro.infer.SVI(model.model, guide, pyro.optim.Adam({"lr": 1e-2}), loss=LinearFreeBitsELBO(lam=0.1))
    losses = [svi.step(x, mask) for _ in range(30)]
    assert losses[-1] < losses[0]
    report = evaluate_elbo(model.model, guide, [x[i, : int(mask[i].sum())] for i in range(len(x))], device="cuda")
    assert report.steps == int(mask.sum())
    samples = model.generate(2, 50)  # the cached sampler, on the model's device
    assert samples.device.type == "cuda" and samples.shape == (2, 50, 2)
    torch.manual_seed(0)
    cached = model.generate(2, 30)
    torch.manual_seed(0)
    assert torch.allclose(cached, model.generate(2, 30, cached=False), atol=1e-4)


def test_cpu_and_cuda_agree():
    model = make_model("stcn", tiny_config())
    x, mask = ragged_batch()
    with torch.no_grad():
        cpu = model.trunk(x, mask).d_cur[-1]
        gpu = model.cuda().trunk(x.cuda(), mask.cuda()).d_cur[-1].cpu()
    torch.testing.assert_close(cpu, gpu, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["wavenet-dense", "rnn", "vrnn"])
def test_baselines_train_and_sample_on_cuda(name):
    from tests.test_baselines import tiny

    model, guide = tiny(name)
    model, guide = model.cuda(), guide.cuda()
    x, mask = (t.cuda() for t in ragged_batch())
    svi = pyro.infer.SVI(model.model, guide, pyro.optim.Adam({"lr": 1e-2}), loss=LinearFreeBitsELBO(lam=0.1))
    losses = [svi.step(x, mask) for _ in range(30)]
    assert losses[-1] < losses[0]
    samples = model.generate(2, 20, prime=x[:2, :5])
    assert samples.device.type == "cuda" and samples.shape == (2, 20, 2)
