"""``pyro-stcn bench``: the benchmarks (:mod:`pyro_stcn.bench.benchmark`)."""

import argparse

import torch

from pyro_stcn.bench import benchmark
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


def bench_suite(args: argparse.Namespace, device: torch.device) -> None:
    """The ``pyro_stcn.bench.benchmark`` tables: every figure a median of interleaved repeats."""
    quick, repeats = args.quick, args.repeats or (2 if args.quick else 5)
    suites = ["steps", "scaling", "generation"] if args.suite == "all" else [args.suite]
    benchmark.clock = benchmark.CLOCKS[args.clock]
    flags = " --quick" * quick + " --bf16" * args.bf16 + f" --clock {args.clock}"
    print(f"pyro-stcn bench {args.suite}{flags}: medians of {repeats} interleaved repeats ({args.clock} time) on "
          f"{benchmark.machine_line(device)}", flush=True)  # fmt: skip
    setups = [benchmark.stcn_dense_setup(device, quick), benchmark.ms_stcn_setup(device, quick)]
    for setup in setups:
        setup.bf16 = args.bf16
    if "steps" in suites:
        print("\nSVI step (zero_grad, loss, backward) through Pyro against the same networks by a hand-written loss")
        benchmark.print_steps(setups, device, repeats, out=lambda line: print(line, flush=True))
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


def add_bench(sub) -> argparse.ArgumentParser:
    b = sub.add_parser("bench", help="benchmarks: plain, cached vs uncached generation; `bench all` for every suite")
    b.add_argument("--steps", type=positive_ints, default=[1000, 4000], help="sequence lengths (default 1000,4000)")
    b.add_argument("--num", type=positive_int, default=1, help="sequences generated at once")
    suites = b.add_subparsers(dest="suite", metavar="{steps,scaling,generation,all}")
    helps = {
        "steps": "SVI step of STCN-dense and MS-STCN: Pyro against a hand-written PyTorch loss, as a ratio",
        "scaling": "step time and memory at T, 2T, 4T",
        "generation": "cached generation against uncached and the matrix-vector floor, batch 1 and 64",
        "all": "every suite above, in one run",
    }
    for name, text in helps.items():
        s = suites.add_parser(name, help=text)
        s.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the command")
        s.add_argument("--repeats", type=positive_int, help="interleaved repeats per figure (default 5; --quick 2)")
        s.add_argument("--gen-steps", type=positive_int, default=320, help="generated steps per timing (default 320)")
        s.add_argument("--clock", choices=list(benchmark.CLOCKS), default="wall",
                       help="wall-clock time, or this process's CPU time (less noise on a shared CPU)")  # fmt: skip
        s.add_argument("--bf16", action="store_true", help="training steps with the networks in bfloat16 (autocast)")
        s.add_argument("--device", default=argparse.SUPPRESS, choices=["auto", "cpu", "cuda"])
    b.set_defaults(func=cmd_bench, suite=None)
    return b
