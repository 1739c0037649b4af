"""What computing 1x1 maps in the convolutions' layout saves (pyro_stcn.nets.pointwise),
and upsampling blocks as phases of one product (``GatedBlock.upsample``).

1. A 1x1 convolution's forward and backward, ``F.conv1d`` against one ``baddbmm``, at
   the channel counts the models use, by input width.
2. An upsampling block's forward and backward at MS-STCN's IAM-OnDB sizes (64 channels,
   8 latent units as its condition, stride 2), ``ConvTranspose1d`` against the phases.
3. The training step (zero_grad, loss, backward) of the two ``bench steps`` set-ups with
   all of it as before (``F.conv1d``, ``F.linear``, ``ConvTranspose1d``) and as now.

Interleaved medians, one run.

    python scripts/layout_study.py [--threads N] [--repeats R]
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from pyro_stcn.bench.benchmark import interleaved, ms_stcn_setup, stcn_dense_setup
from pyro_stcn.nets import pointwise
from pyro_stcn.nets.trunk import GatedBlock, upsampled_by_transposed_conv

SIZES = [(16, 32, 1024), (16, 64, 1024), (16, 64, 128), (16, 128, 512), (20, 256, 257), (20, 512, 257)]
UPSAMPLED = [512, 256, 128]  # input steps of MS-STCN's upsampling blocks at B = 16, T = 1024


def one_by_one(batch: int, channels: int, time: int, repeats: int) -> dict[str, float]:
    x = torch.randn(batch, channels, time, requires_grad=True)
    conv = nn.Conv1d(channels, 2 * channels, 1)
    weight = conv.weight[:, :, 0]

    def run(product):
        def step():
            x.grad = conv.weight.grad = conv.bias.grad = None
            product().sum().backward()

        return step

    return interleaved({
        "conv1d": run(lambda: F.conv1d(x, conv.weight, conv.bias)),
        "baddbmm": run(lambda: torch.baddbmm(conv.bias[None, :, None], weight.expand(batch, -1, -1), x)),
    }, repeats)  # fmt: skip


def upsampling(time: int, repeats: int) -> dict[str, float]:
    block = GatedBlock(64, 64, kernel=1, up=2, cond_channels=8)
    x, z = torch.randn(16, 64, time, requires_grad=True), torch.randn(16, 8, time)
    grad = torch.randn(16, 64, 2 * time)

    def run(forward):
        def step():
            x.grad = None
            block.zero_grad(set_to_none=True)
            forward().backward(grad)

        return step

    return interleaved({
        "transposed": run(lambda: upsampled_by_transposed_conv(block, x, torch.cat([x, z], 1))),
        "phases": run(lambda: block(x, z)),
    }, repeats)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU, {args.threads} threads, torch {torch.__version__}; medians of {args.repeats} interleaved repeats")
    print("\n| 1x1 conv, B × C → 2C × T | F.conv1d (ms) | baddbmm (ms) | baddbmm ÷ conv1d |")
    print("|---|---|---|---|")
    for b, c, t in SIZES:
        r = one_by_one(b, c, t, args.repeats)
        print(f"| {b} × {c} → {2 * c} × {t} | {1e3 * r['conv1d']:.2f} | {1e3 * r['baddbmm']:.2f} "
              f"| {r['baddbmm'] / r['conv1d']:.2f} |", flush=True)  # fmt: skip
    print("\n| upsampling block, 16 × (64 + 8) × T → 64 × 2T | ConvTranspose1d (ms) | phases (ms) "
          "| phases ÷ ConvTranspose1d |")  # fmt: skip
    print("|---|---|---|---|")
    for t in UPSAMPLED:
        r = upsampling(t, args.repeats)
        print(f"| T = {t} | {1e3 * r['transposed']:.2f} | {1e3 * r['phases']:.2f} "
              f"| {r['phases'] / r['transposed']:.2f} |", flush=True)  # fmt: skip
    widest, linear, upsample = pointwise.WIDEST_AS_PRODUCT, pointwise.ChannelLinear.forward, GatedBlock.upsample

    def layout(now: bool) -> None:
        pointwise.WIDEST_AS_PRODUCT = widest if now else -1
        pointwise.ChannelLinear.forward = linear if now else nn.Linear.forward
        GatedBlock.upsample = upsample if now else upsampled_by_transposed_conv

    print("\n| training step | as before (s) | as now (s) | now ÷ before |")
    print("|---|---|---|---|")
    for setup in (stcn_dense_setup(torch.device("cpu")), ms_stcn_setup(torch.device("cpu"))):
        x, mask = setup.batch(setup.batch_size, setup.length, torch.device("cpu"))
        step = setup.pyro_step(x, mask)
        r = interleaved({"before": lambda step=step: (layout(False), step()),
                         "now": lambda step=step: (layout(True), step())}, args.repeats)  # fmt: skip
        print(f"| {setup.name}, B = {setup.batch_size}, T = {setup.length} | {r['before']:.3f} | {r['now']:.3f} "
              f"| {r['now'] / r['before']:.2f} |", flush=True)  # fmt: skip
    layout(True)


if __name__ == "__main__":
    main()
