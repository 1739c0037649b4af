"""Where the cached sampler's time goes at batch 1: a whole generated step, the trunk's
step, the same matrix products alone, one product over the same weights, and one over all
the model's weights (``bench generation``'s floor); and with each Gaussian head's two nets
run apart rather than fused (``FusedGaussianHead``, as the sampler runs them), the whole
step and the five prior layers' draws. Interleaved medians, per step.

    python scripts/sampler_floor.py [--threads N]
"""

import argparse
from unittest import mock

import torch
import torch.nn.functional as F

from pyro_stcn.bench.benchmark import interleaved, stcn_dense_setup
from pyro_stcn.nets.heads import FusedGaussianHead, join

STEPS = 50  # generated steps per timed call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = stcn_dense_setup(torch.device("cpu")).model.eval()
    stepper = model.trunk.stepper(1)
    blocks = [b for group in stepper.groups for b in group]
    x = torch.zeros(1, 3)
    products = [(b.conv_weight, b.conv_bias) for b in blocks] + [(b.out_weight, b.out_bias) for b in blocks]
    products += [(b.res[0], b.res[1]) for b in blocks if b.res is not None]
    inputs = {w.shape[0]: torch.randn(1, w.shape[0]) for w, _ in products}
    trunk_weights = sum(w.numel() for w, _ in products)
    all_weights = sum(p.numel() for name, p in model.named_parameters() if name.endswith("weight"))
    same = torch.randn(trunk_weights // 1024, 1024)
    every = torch.randn(all_weights // 1024, 1024)
    v = torch.randn(1, 1024)
    d_prev = [h[:, None] for h in stepper(x)]
    fused = {head: FusedGaussianHead(head) for head in model.prior.heads}

    def unfused_generate() -> None:
        with mock.patch.object(FusedGaussianHead, "fits", staticmethod(lambda head: False)):
            model.generate(1, STEPS)

    def priors(fuse: bool) -> list:
        for head, f in fused.items():
            head.fused = f if fuse else None
        try:
            return [model.top_down(d_prev, lambda l, d, z: model.prior.sample(l, join(d, z))) for _ in range(STEPS)]
        finally:  # the other rows time the heads as the sampler leaves them
            for head in fused:
                head.fused = None

    contenders = {
        "whole generated step (cached)": lambda: model.generate(1, STEPS),
        "trunk step (BlockStepper)": lambda: [stepper(x) for _ in range(STEPS)],
        f"its {len(products)} matrix products alone": lambda: [
            [torch.addmm(b, inputs[w.shape[0]], w) for w, b in products] for _ in range(STEPS)
        ],
        f"one product over the same {trunk_weights / 1e6:.1f}M weights": lambda: [
            F.linear(v, same) for _ in range(STEPS)
        ],
        f"floor: one product over all {all_weights / 1e6:.1f}M weights": lambda: [
            F.linear(v, every) for _ in range(STEPS)
        ],
        "whole generated step, heads apart": unfused_generate,
        "five prior layers' draws, heads fused": lambda: priors(True),
        "the same, each head's two nets apart": lambda: priors(False),
    }
    with torch.no_grad():
        times = interleaved(contenders, repeats=5)
    floor = times[list(contenders)[4]]
    print(f"STCN-dense at paper 1's IAM-OnDB size, batch 1, CPU, {args.threads} threads; per generated step:")
    print("| what | ms | ÷ floor |")
    print("|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {1e3 * seconds / STEPS:.2f} | {seconds / floor:.2f} |")


if __name__ == "__main__":
    main()
