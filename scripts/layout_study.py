"""What computing 1x1 maps in the convolutions' layout saves (pyro_stcn.nets.pointwise).

1. A 1x1 convolution's forward and backward, ``F.conv1d`` against one ``baddbmm``, at
   the channel counts the models use, by input width.
2. The training step (zero_grad, loss, backward) of the two ``bench steps`` set-ups with
   the 1x1 maps as before (``F.conv1d`` and ``F.linear``) and as now.

Interleaved medians, one run.

    python scripts/layout_study.py [--threads N] [--repeats R]
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from pyro_stcn.bench.benchmark import interleaved, ms_stcn_setup, stcn_dense_setup
from pyro_stcn.nets import pointwise

SIZES = [(16, 32, 1024), (16, 64, 1024), (16, 64, 128), (16, 128, 512), (20, 256, 257), (20, 512, 257)]


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
    widest, linear = pointwise.WIDEST_AS_PRODUCT, pointwise.ChannelLinear.forward

    def layout(now: bool) -> None:
        pointwise.WIDEST_AS_PRODUCT = widest if now else -1
        pointwise.ChannelLinear.forward = linear if now else nn.Linear.forward

    print("\n| training step | 1x1 maps as before (s) | as now (s) | now ÷ before |")
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
