"""The 1x1 maps in the convolutions' layout (pyro_stcn.nets.pointwise) and the
upsampling blocks' phases compute what ``F.conv1d``, ``F.linear`` and
``ConvTranspose1d`` compute, to float32 rounding: each piece, and every model's loss
and gradients, against the previous computation in float64.

Tolerances: float32 carries about 7 significant digits and these sums run over at
most a few thousand terms, so results may differ from float64 by a relative 1e-5 of
their scale; a wrong map (a transposed weight, a missed bias, a shifted step) is off
by the order of the values themselves.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyro_stcn.models import MSSTCNConfig
from pyro_stcn.models.wavenet import WavenetConfig
from pyro_stcn.nets import pointwise
from pyro_stcn.nets.heads import FusedGaussianHead
from pyro_stcn.nets.pointwise import ChannelLinear
from pyro_stcn.nets.trunk import GatedBlock, upsampled_by_transposed_conv
from pyro_stcn.runs.registry import default_guide, make_guide, make_model
from tests.conftest import latents_of, loss_and_grads_at, ragged_batch, tiny_config

RTOL = 1e-5


def close(value: torch.Tensor, reference: torch.Tensor, rtol: float = RTOL) -> bool:
    """|value - reference| within ``rtol`` of the reference's largest magnitude."""
    return bool((value.double() - reference).abs().max() <= rtol * reference.abs().max().clamp_min(1.0))


@pytest.mark.parametrize("channels", [5, pointwise.WIDEST_AS_PRODUCT + 1])
def test_pointwise_equals_the_convolution(channels):
    torch.manual_seed(0)
    conv = nn.Conv1d(channels, 7, 1)
    x = torch.randn(3, channels, 11)
    reference = F.conv1d(x.double(), conv.weight.double(), conv.bias.double())
    assert close(pointwise.pointwise(conv, x), reference)
    assert not close(pointwise.pointwise(conv, x.flip(-1)), reference)  # the check sees a shifted step


def test_channel_linear_reads_transposed_views_and_equals_linear():
    torch.manual_seed(0)
    linear = ChannelLinear(6, 4)
    stored = torch.randn(3, 6, 9)  # [batch, channels, time], as the convolutions leave it
    for x in (stored.transpose(1, 2), stored.transpose(1, 2).contiguous(), stored[0].t()):
        y = linear(x)
        reference = F.linear(x.double(), linear.weight.double(), linear.bias.double())
        assert y.shape == reference.shape and y.is_contiguous() and close(y, reference)


@pytest.mark.parametrize("res", [False, True])
def test_upsampling_phases_equal_the_transposed_convolution(res):
    torch.manual_seed(0)
    block = GatedBlock(5 if res else 4, 4, kernel=1, up=3, cond_channels=2).double()
    x, cond = torch.randn(2, block.conv.in_channels - 2, 6, dtype=torch.float64), torch.randn(2, 2, 6).double()
    y, inputs = block(x, cond), torch.cat([x, cond], 1)
    assert y.shape == (2, 4, 18) and close(y, upsampled_by_transposed_conv(block, x, inputs), rtol=1e-12)
    block.conv.weight.data = block.conv.weight.data.roll(1, dims=-1)  # the phases in another order
    assert not close(y, upsampled_by_transposed_conv(block, x, inputs), rtol=1e-3)


def _as_before(monkeypatch) -> None:
    """The 1x1 maps as the previous version computed them: F.conv1d and F.linear;
    upsampling blocks by ``ConvTranspose1d``; and Gaussian heads never fused."""
    monkeypatch.setattr(FusedGaussianHead, "fits", staticmethod(lambda head: False))
    monkeypatch.setattr(pointwise, "WIDEST_AS_PRODUCT", -1)
    monkeypatch.setattr(ChannelLinear, "forward", nn.Linear.forward)
    monkeypatch.setattr(GatedBlock, "upsample", upsampled_by_transposed_conv)


MODELS = {
    "stcn": lambda: tiny_config(dense=False),
    "stcn-dense": lambda: tiny_config(),
    "wavenet-dense": lambda: WavenetConfig(
        x_dim=2, likelihood="gmm", layers=2, channels=8, blocks=2, hidden=8, components=3
    ),  # fmt: skip
    "ms-stcn": lambda: MSSTCNConfig(
        x_dim=2,
        likelihood="gmm",
        components=3,
        strides=[1, 2, 2],
        channels=[6, 8, 8],
        z_dims=[3, 2, 2],
        dilations=[[1, 1], [1, 1], [1, 2]],
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", list(MODELS))
def test_loss_and_gradients_equal_the_previous_computation_in_float64(name, monkeypatch):
    torch.manual_seed(0)
    model = make_model(name, MODELS[name]())
    guide = make_guide(default_guide(name), model)
    x, mask = ragged_batch((12, 9, 4))
    latents = latents_of(guide, x, mask)
    loss, grads = loss_and_grads_at(model, guide, x, mask, latents)

    reference_model = copy.deepcopy(model).double()
    reference_guide = make_guide(default_guide(name), reference_model).double()
    reference_guide.load_state_dict(guide.state_dict())
    _as_before(monkeypatch)
    latents64 = {n: v.double() for n, v in latents.items()}
    reference_loss, reference_grads = loss_and_grads_at(reference_model, reference_guide, x.double(), mask, latents64)

    assert close(loss, reference_loss)
    assert len(grads) == len(reference_grads)
    for g, r in zip(grads, reference_grads, strict=True):
        assert close(g, r, rtol=1e-4)  # a gradient sums its products over every step and sequence


@pytest.mark.parametrize("name", ["stcn-dense", "ms-stcn"])
def test_samples_equal_the_previous_computation(name, monkeypatch):
    """Same seed, same draws: sequences from the cached sampler agree with those of the
    previous version's computation (the networks rerun at every step with F.conv1d and
    F.linear) to float32 rounding, carried through 20 autoregressive steps."""
    torch.manual_seed(0)
    model = make_model(name, MODELS[name]()).eval()
    torch.manual_seed(1)
    now = model.generate(3, 20)
    _as_before(monkeypatch)
    torch.manual_seed(1)
    before = model.generate(3, 20, cached=False)
    assert now.shape == before.shape and torch.allclose(now, before, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(now[0], now[1], atol=1e-2)  # the draws differ across sequences
