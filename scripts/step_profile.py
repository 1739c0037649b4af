"""Where the MS-STCN training step's time and memory go, ours beside the authors'.

``torch.profiler`` over a few of each step (``bench authors``' steps, B = 16, T = 1024):
the operators that take the most time, and the memory each step allocates in all.
Profiling slows small operators more than large ones, so read shares, not seconds.

    python scripts/step_profile.py --authors DIR [--steps N] [--rows N]
"""

import argparse
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from pyro_stcn.bench.authors import our_step, their_step
from pyro_stcn.bench.benchmark import ms_stcn_setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors", type=Path, required=True, help="a checkout of carl-andersson/MS-STCN")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args()
    device = torch.device("cpu")
    setup = ms_stcn_setup(device)
    x, mask = setup.batch(setup.batch_size, setup.length, device)
    steps = {
        "ours, paper 2's IAM-OnDB layout": our_step(setup, x, mask, Path(tempfile.mkdtemp()), device),
        "authors', their IAM-OnDB options": their_step(args.authors, x, device),
    }
    for name, step in steps.items():
        step()  # warm
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            for _ in range(args.steps):
                step()
        ops = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in ops)
        allocated = sum(max(e.self_cpu_memory_usage, 0) for e in ops) / args.steps
        print(f"\n{name}: {allocated / 2**30:.2f} GB allocated per step; "
              f"operators by self time ({torch.get_num_threads()} threads)")  # fmt: skip
        print("| operator | calls per step | share of time |")
        print("|---|---|---|")
        for e in sorted(ops, key=lambda e: -e.self_cpu_time_total)[: args.rows]:
            print(f"| {e.key} | {e.count / args.steps:.0f} | {e.self_cpu_time_total / total:.1%} |")


if __name__ == "__main__":
    main()
