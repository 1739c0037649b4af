"""``pyro-stcn bench``: the benchmarks (:mod:`pyro_stcn.bench.benchmark`)."""

import argparse
import tempfile
from pathlib import Path

import torch

from pyro_stcn.bench import authors, benchmark
from pyro_stcn.bench.benchmark import time_generation
from pyro_stcn.cli.options import pick_device, positive_int, positive_ints
from pyro_stcn.nets import parameter_count


def cmd_bench(args: argparse.Namespace) -> None:
    """Cached vs uncached generation at paper 1's handwriting size (receptive field 316);
    with a suite (``steps``, ``scaling``, ``generation`` or ``all``), that suite."""
    device = pick_device(args.device)
    if args.suite:
        return bench_suite(args, device)
    model = benchmark.stcn_dense_setup(device).model.eval()  # untrained: the weights do not change the cost
    size = parameter_count(model)
    print(
        f"STCN-dense at paper 1's IAM-OnDB size ({size:,} parameters, receptive field "
        f"{model.trunk.receptive_field}), {args.num} sequence(s), on {device} with {torch.get_num_threads()} threads"
    )
    print("| steps | cached (s) | uncached (s) | uncached / cached | max difference |")
    print("|---|---|---|---|---|")
    for steps in args.steps:
        t = time_generation(model.generate, steps, args.num)
        print(
            f"| {steps} | {t.cached_seconds:.2f} | {t.uncached_seconds:.2f} | {t.speed_up:.1f} | "
            f"{t.max_difference:.1e} |",
            flush=True,
        )


def _header(args: argparse.Namespace, flags: str, repeats: int, device: torch.device) -> None:
    """The command line and the machine, first line of every suite's output."""
    print(f"pyro-stcn bench {args.suite}{flags} --clock {args.clock}: medians of {repeats} interleaved repeats "
          f"({args.clock} time) on {benchmark.machine_line(device)}", flush=True)  # fmt: skip


def bench_suite(args: argparse.Namespace, device: torch.device) -> None:
    """The ``pyro_stcn.bench.benchmark`` tables: every figure a median of interleaved repeats."""
    if args.suite == "authors":
        return bench_authors(args, device)
    quick, repeats = args.quick, args.repeats or (2 if args.quick else 5)
    suites = ["steps", "scaling", "generation"] if args.suite == "all" else [args.suite]
    benchmark.clock = benchmark.CLOCKS[args.clock]
    _header(args, " --quick" * quick + " --bf16" * args.bf16 + " --compile" * args.compile, repeats, device)
    setups = [benchmark.stcn_dense_setup(device, quick), benchmark.ms_stcn_setup(device, quick)]
    for setup in setups:
        setup.bf16 = args.bf16
    if "steps" in suites:
        print("\nSVI step (zero_grad, loss, backward) through Pyro against the same networks by a hand-written loss")
        benchmark.print_steps(setups, device, repeats, out=lambda line: print(line, flush=True))
        if args.compile:
            print("\nThe same Pyro step with the networks compiled by torch.compile (pyro_stcn.nets.compiled)")
            benchmark.print_compiled(setups, device, repeats, out=lambda line: print(line, flush=True))
    if "scaling" in suites:
        print("\nStep time and memory as T grows (Pyro step)")
        benchmark.print_scaling(setups, device, repeats, out=lambda line: print(line, flush=True))
    if "generation" in suites:
        model = setups[0].model
        size = parameter_count(model)
        print(f"\nGeneration, {setups[0].name} ({size:,} parameters, receptive field {model.trunk.receptive_field}); "
              "floor: one matrix-vector (batch 1) or matrix (batch 64) product over as many weights")  # fmt: skip
        benchmark.print_generation(model, [1, 4] if quick else [1, 64], 16 if quick else args.gen_steps, device,
                                   repeats, out=lambda line: print(line, flush=True))  # fmt: skip


def bench_authors(args: argparse.Namespace, device: torch.device) -> None:
    """The authors' MS-STCN training step beside ours (:mod:`pyro_stcn.bench.authors`);
    without ``--authors``, one line saying how to run it."""
    if args.authors is None:
        print(authors.SKIPPED)
        return
    repeats = args.repeats or (1 if args.quick else 5)
    benchmark.clock = benchmark.CLOCKS[args.clock]
    with tempfile.TemporaryDirectory() as run_dir:
        contest = authors.prepare(args.authors, device, args.quick, Path(run_dir))  # refuses a wrong directory first
        _header(args, f" --authors {args.authors}" + " --quick" * args.quick, repeats, device)
        seconds = authors.run(contest, repeats)
    authors.print_contest(contest, seconds, out=lambda line: print(line, flush=True))


def _common_flags(s: argparse.ArgumentParser, repeats: str) -> None:
    s.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the command")
    s.add_argument("--repeats", type=positive_int, help=f"interleaved repeats per figure ({repeats})")
    s.add_argument("--clock", choices=list(benchmark.CLOCKS), default="wall",
                   help="wall-clock time, or this process's CPU time (less noise on a shared CPU)")  # fmt: skip
    s.add_argument("--device", default=argparse.SUPPRESS, choices=["auto", "cpu", "cuda"])


def add_bench(sub) -> argparse.ArgumentParser:
    b = sub.add_parser("bench", help="benchmarks: plain, cached vs uncached generation; `bench all` for every suite")
    b.add_argument("--steps", type=positive_ints, default=[1000, 4000], help="sequence lengths (default 1000,4000)")
    b.add_argument("--num", type=positive_int, default=1, help="sequences generated at once")
    suites = b.add_subparsers(dest="suite", metavar="{steps,scaling,generation,all,authors}")
    helps = {
        "steps": "SVI step of STCN-dense and MS-STCN: Pyro against a hand-written PyTorch loss, as a ratio",
        "scaling": "step time and memory at T, 2T, 4T",
        "generation": "cached generation against uncached and the matrix-vector floor, batch 1 and 64",
        "all": "every suite above, in one run",
    }
    for name, text in helps.items():
        s = suites.add_parser(name, help=text)
        _common_flags(s, "default 5; --quick 2")
        s.add_argument("--gen-steps", type=positive_int, default=320, help="generated steps per timing (default 320)")
        s.add_argument("--bf16", action="store_true", help="training steps with the networks in bfloat16 (autocast)")
        s.add_argument("--compile", action="store_true", help="steps: also time the step with the networks compiled")
    a = suites.add_parser("authors", help="the authors' MS-STCN training step (their code, --authors) beside ours")
    a.add_argument("--authors", type=Path, metavar="DIR",
                   help=f"a checkout of {authors.REPOSITORY}; without it the suite is skipped")  # fmt: skip
    _common_flags(a, "default 5; --quick 1")
    b.set_defaults(func=cmd_bench, suite=None)
    return b
