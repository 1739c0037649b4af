"""CUDA: the same training step on the GPU (run with ``-m gpu`` on a machine with one)."""

import pyro
import pytest
import torch

from pyro_stcn.evaluation.bounds import evaluate_elbo
from pyro_stcn.inference.objectives import LinearFreeBitsELBO
from pyro_stcn.runs.registry import make_guide, make_model
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


@pytest.mark.skipif(
    not torch.cuda.is_available() or not torch.cuda.is_bf16_supported(including_emulation=False),
    reason="no CUDA device with bfloat16 arithmetic",
)
def test_a_bf16_training_run_on_cuda_learns(tmp_path):
    """``--bf16`` end to end on the GPU: losses finite and falling, parameters float32."""
    from pyro_stcn import runs
    from pyro_stcn.data import load_digits_splits
    from tests.test_precision import _losses

    settings = {"steps": 60, "valid_every": 60, "channels": [16], "hidden": 16, "z_dims": [4, 2], "blocks": 2,
                "valid_sequences": 20, "bf16": True}  # fmt: skip
    run_config, data = runs.new_run_config(settings, data=load_digits_splits())
    model, guide = runs.start_run(run_config, tmp_path, device="cuda")
    runs.train_run(run_config, model, guide, data, tmp_path, device="cuda", callbacks=[])
    losses = _losses(tmp_path)
    assert len(losses) == 60 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-10:]) < sum(losses[:10])
    assert all(p.dtype == torch.float32 and p.is_cuda for m in (model, guide) for p in m.parameters())
