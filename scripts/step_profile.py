"""Where the MS-STCN training step's time and memory go, ours beside the authors'.

``torch.profiler`` over a few of each step (``bench authors``' steps, B = 16, T = 1024,
both networks in paper 2's IAM-OnDB layout): the operators that take the most time, and
the memory each step allocates in all.
Profiling slows small operators more than large ones, so read shares, not seconds.

    python scripts/step_profile.py --authors DIR [--steps N] [--rows N]
"""

import argparse
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from pyro_stcn.bench.authors import our_sizes, our_step, their_step
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
    with tempfile.TemporaryDirectory() as run_dir:  # the trainer writes nothing there; it wants one
        steps = {
            "ours, paper 2's IAM-OnDB layout": our_step(setup, x, mask, Path(run_dir), device),
            "authors', paper 2's IAM-OnDB layout": their_step(args.authors, x, device, our_sizes(setup.model.config)),
        }
        profile_steps(steps, args.steps, args.rows)


def profile_steps(steps: dict, repeats: int, rows: int) -> None:
    """For each named step: one untimed, then ``repeats`` under the profiler; the memory
    allocated per step and the ``rows`` operators with the most self time."""
    for name, step in steps.items():
        step()  # warm
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            for _ in range(repeats):
                step()
        ops = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in ops)
        allocated = sum(max(e.self_cpu_memory_usage, 0) for e in ops) / repeats
        print(f"\n{name}: {allocated / 2**30:.2f} GB allocated per step; "
              f"operators by self time ({torch.get_num_threads()} threads)")  # fmt: skip
        print("| operator | calls per step | share of time |")
        print("|---|---|---|")
        for e in sorted(ops, key=lambda e: -e.self_cpu_time_total)[:rows]:
            print(f"| {e.key} | {e.count / repeats:.0f} | {e.self_cpu_time_total / total:.1%} |")


if __name__ == "__main__":
    main()
