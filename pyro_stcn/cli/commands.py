"""pyro-stcn command line: train, evaluate and sample STCN models.

    pyro-stcn train                       # STCN-dense + ladder guide on binarised digits
    pyro-stcn evaluate --run runs/NAME    # test -ELBO and per-layer KL
    pyro-stcn evaluate --run runs/NAME --iw 1000   # and the importance-weighted bound, per step
    pyro-stcn sample --run runs/NAME      # a PNG of generated sequences
    pyro-stcn sample --run runs/NAME --prime 20   # continuations of real test sequences
    pyro-stcn reconstruct --run runs/NAME # test sequences beside their reconstructions
    pyro-stcn ppc --run runs/NAME         # posterior predictive checks
    pyro-stcn bench                       # cached vs uncached generation time
    pyro-stcn bench all [--quick]         # step ratios to hand-written PyTorch, scaling in T, generation
    pyro-stcn compare --budget 3          # baselines and STCNs, 3 minutes each, one table

``python run.py`` is the same command. ``pyro-stcn COMMAND --help`` lists every option.

This module parses arguments and prints; what it runs is the library: runs
(:mod:`pyro_stcn.runs.api`), the model registry (:mod:`pyro_stcn.runs.registry`), training,
evaluation, generation and plots. Every failure is one ``error: ...`` line on stderr
and an exit code (:func:`main`): 2 for usage errors (a flag, file or field that cannot
be used: ``ValueError``, ``FileNotFoundError``, a run directory in use), 1 for a run
that failed (diverged, or a disk that would not take a write), 128 + N for a run
stopped by signal N (SIGTERM 143, Ctrl-C 130) after saving where to resume from.
"""

import argparse
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from pyro_stcn import runs
from pyro_stcn.bench import benchmark
from pyro_stcn.bench.benchmark import time_generation
from pyro_stcn.data import DATASETS, FORMATS, Splits, pad_batch
from pyro_stcn.data.wav import write_wav
from pyro_stcn.evaluation import bounds
from pyro_stcn.evaluation.baselines import independent_bernoulli_nll
from pyro_stcn.evaluation.compare import compare, write_comparison
from pyro_stcn.evaluation.plots import plot_kl_bars, plot_layer_kl, plot_losses, plot_ppc, plot_sequences, read_log
from pyro_stcn.evaluation.predictive import check_table, one_step_ahead, posterior_predictive_check
from pyro_stcn.inference import OBJECTIVES
from pyro_stcn.models import MS_STCN_LAYOUTS, PRIORS
from pyro_stcn.nets.likelihoods import LIKELIHOODS
from pyro_stcn.runs.presets import PRESETS, apply_preset, as_flags
from pyro_stcn.runs.registry import family_of, guide_names, model_names, printed_name
from pyro_stcn.training import Callback, Diverged, Interrupted, PeriodicCheckpoint, ProgressBar, distributed
from pyro_stcn.training.lock import hold
from pyro_stcn.training.tensorboard import TensorBoard


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA device (torch.cuda.is_available() is False)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def settings_of(args: argparse.Namespace, quiet: bool = False) -> dict:
    """The train flags as settings for :func:`pyro_stcn.runs.api.new_run_config`, the
    preset applied (and, unless ``quiet``, printed)."""
    settings = dict(vars(args))
    if settings.get("budget") is not None:
        settings["budget"] *= 60  # minutes on the command line, seconds in TrainConfig
    if not args.preset:
        return settings
    settings, left_out = apply_preset(settings, args.preset)
    if not quiet:
        print(f"preset {args.preset} = {as_flags(PRESETS[args.preset])} (flags you give override these)")
        if left_out:
            print(f"  left out for your --data/--model: {', '.join(runs.flag(k) for k in left_out)}")
    return settings


# Only these may be given with --resume; the run's own config.json holds the rest.
RESUME_FLAGS = {"resume", "steps", "device", "no_progress", "tensorboard", "checkpoint_every", "func", "command"}


def resumed(args: argparse.Namespace, device: torch.device) -> tuple:
    """The config, model, guide, data and directory of the run ``--resume`` continues."""
    changed = sorted(k for k, v in vars(args).items() if k not in RESUME_FLAGS and v is not None and v is not False)
    if changed:
        raise ValueError(
            f"--resume continues {args.resume} with its own config.json; only --steps, --device, --no-progress, "
            f"--tensorboard and --checkpoint-every may be given with it, not {', '.join(runs.flag(k) for k in changed)}"
        )
    run_config, model, guide = runs.resume_run(args.resume, args.steps, device)
    if distributed.is_main() and not (Path(args.resume) / "last.pt").exists():
        print(f"{args.resume} has no last.pt (it stopped before its first step ended): training it from step 0")
    return run_config, model, guide, runs.load_data(run_config), Path(args.resume)


def writable(path: Path, flag: str, directory: bool) -> None:
    """Refuse, before anything is written, a path the command could not write: one
    that exists as the other kind (file or directory), lies under a file, or under a
    directory this process may not write to."""
    kind = "a directory" if directory else "a file path"
    if path.exists() and path.is_dir() != directory:
        raise ValueError(f"{flag} {path} is {'a file' if directory else 'a directory'}; expected {kind}")
    parent = path if directory else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: {parent} is a file, so nothing can be written under it; expected {kind}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: {parent} is not writable by this user; expected {kind} that can be written")


def cmd_train(args: argparse.Namespace) -> None:
    """Train a run; under torchrun, one rank of it (:mod:`pyro_stcn.training.distributed`):
    rank 0 alone prints, evaluates and plots, the others leave after training."""
    device = distributed.start(pick_device(args.device))
    try:
        train_and_report(args, device, distributed.is_main())
    finally:
        distributed.finish()


def train_and_report(args: argparse.Namespace, device: torch.device, main: bool) -> None:
    """Check every setting, then (holding the run directory's lock) train and report."""
    if args.checkpoint_every is not None and not 0 < args.checkpoint_every < math.inf:
        raise ValueError(f"--checkpoint-every: expected a positive number of minutes, got {args.checkpoint_every:g}")
    if args.resume:
        if not Path(args.resume).is_dir():
            raise FileNotFoundError(f"--resume {args.resume}: no such directory; expected a run directory")
        with hold(args.resume):
            train_and_report_locked(args, device, main, *resumed(args, device))
        return
    run_config, data = runs.new_run_config(settings_of(args, quiet=not main))
    name = f"{run_config['model']}-{run_config['guide']}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(args.out or f"runs/{distributed.from_main(name)}")  # the ranks' clocks differ
    writable(run_dir, "--out", directory=True)
    with hold(run_dir):
        model, guide = runs.start_run(run_config, run_dir, device)
        train_and_report_locked(args, device, main, run_config, model, guide, data, run_dir)


def train_and_report_locked(args: argparse.Namespace, device: torch.device, main: bool, run_config: dict,
                            model: nn.Module, guide: nn.Module, data: Splits, run_dir: Path) -> None:  # fmt: skip
    prior = f" and the {run_config['net']['prior']} prior" if "prior" in run_config["net"] else ""
    processes = f" ({distributed.size()} processes)" if distributed.active() else ""
    if main:
        print(
            f"training {run_config['model']} ({runs.parameter_count(model, guide):,} parameters) with the "
            f"{run_config['guide']} guide{prior} on {run_config['data']} ({len(data.train)} train sequences) by "
            f"{run_config['objective']} ({run_config.get('kl_gradient', 'pathwise')} KL gradient) on "
            f"{device}{processes}; run directory {run_dir}"
        )
    result = runs.train_run(run_config, model, guide, data, run_dir, device, callbacks(args, data))
    if not main:
        return
    stop = "early stop" if result.stopped_early else "time budget" if result.out_of_time else "step budget"
    print(
        f"trained {result.last_step} steps in {result.seconds:.0f} s ({stop}); best validation "
        f"-ELBO {result.best_valid:.2f} nats per sequence at step {result.best_step}"
    )
    report_training(args, run_config, model, guide, data, run_dir)


def callbacks(args: argparse.Namespace, data: Splits) -> list[Callback]:
    """What ``--no-progress``, ``--tensorboard`` and ``--checkpoint-every`` ask for."""
    chosen = [] if args.no_progress else [ProgressBar()]
    if args.tensorboard:
        chosen.append(TensorBoard(data))
    if args.checkpoint_every is not None:
        chosen.append(PeriodicCheckpoint(60 * args.checkpoint_every))
    return chosen


def report_training(args: argparse.Namespace, run_config: dict, model: nn.Module, guide: nn.Module, data: Splits,
                    run_dir: Path) -> None:  # fmt: skip
    """The test -ELBO, the importance-weighted bound with the run's ``test_iw`` draws
    (models with latents), a reference for binary data, and the run's plots and samples."""
    run = runs.Run(run_dir, run_config, model, guide)
    run.data = data
    scores = runs.score(run, "test")
    draws = run_config.get("test_iw", 0)  # 0 in runs saved before it existed
    if scores.neg_elbo.kl_per_sequence and draws:
        with tqdm(total=len(data.test), desc=f"IWAE, K = {draws}", disable=args.no_progress) as bar:
            scores = runs.score(run, "test", draws, progress=bar.update)
    lines, reference = score_lines("test", scores, run_config["model"], draws), None
    if data.likelihood == "bernoulli":
        reference = independent_bernoulli_nll(data.train, data.test)
        values = "pixels" if data.kind == "image" else "values"
        lines.append(
            f"reference: independent-Bernoulli {values} fitted on the training split: "
            f"NLL = {reference:.2f} nats per sequence on the same test split"
        )
    print("\n".join(lines))
    (run_dir / "results.txt").write_text("\n".join(lines) + "\n")
    log = read_log(run_dir / "log.csv")
    plot_losses(log, run_dir / "loss.png", baseline=reference)
    plot_layer_kl(log, run_dir / "kl.png")
    torch.manual_seed(0)
    runs.write_samples(model, data, run_dir / "samples.png", num=32)
    print(f"wrote {run_dir}/: config.json, best.pt, last.pt, log.csv, results.txt, loss.png, kl.png, samples.png")


def open_run(args: argparse.Namespace) -> runs.Run:
    """The run in ``--run`` on ``--device``, with the random state set from ``--seed``."""
    run = runs.load_run(args.run, pick_device(args.device))
    torch.manual_seed(args.seed)
    return run


def iw_meaning(scores: runs.Scores) -> str:
    """What the -IWAE line's factorisation means, in words."""
    if scores.iwae_over == "per sequence":
        return "K draws of all of a sequence's latents at once; ≤ the -ELBO, an upper bound on -log p(x)"
    return (f"K draws of the latents of each {scores.iwae_over.removeprefix('per ')}, weighted on their own, which "
            "given x are independent of the others'; ≤ the -ELBO, an upper bound on -log p(x)")  # fmt: skip


def score_lines(title: str, scores: runs.Scores, model: str, draws: int | None) -> list[str]:
    """The -ELBO, the -IWAE bound with ``draws`` K if scored, and the KL of each layer."""
    lines = bounds.report_lines(title, scores.neg_elbo, model)
    if scores.neg_iwae:
        bound = scores.neg_iwae
        lines.insert(
            1,
            f"{title}: -IWAE bound, K = {draws}: {bound.per_sequence:.2f} ± {bound.stderr:.2f} nats per sequence, "
            f"{bound.per_step:.4f} nats per step; importance-weighted {scores.iwae_over} ({iw_meaning(scores)})",
        )
    return lines


def cmd_evaluate(args: argparse.Namespace) -> None:
    run = runs.load_run(args.run, pick_device(args.device))
    with tqdm(total=len(getattr(run.data, args.split)), desc=f"IWAE, K = {args.iw}",
              disable=args.no_progress or not args.iw) as bar:  # fmt: skip
        scores = runs.score(run, args.split, args.iw, args.chunk, args.seed, progress=bar.update, iw_over=args.iw_over)
    title = f"{run.config['model']} on {run.config['data']}, {args.split} split"
    lines = score_lines(title, scores, run.config["model"], args.iw)
    if run.data.kind == "image":
        lines.append("one sequence is one image: nats per sequence are nats per image")
    print("\n".join(lines))
    if scores.neg_elbo.kl_per_sequence:
        path = Path(args.run) / f"kl-{args.split}.png"
        plot_kl_bars(scores.neg_elbo.kl_per_sequence, f"{title}: KL of each layer", path)
        print(f"wrote {path}")


def cmd_sample(args: argparse.Namespace) -> None:
    run = open_run(args)
    name = f"samples-prime{args.prime}" if args.prime else "samples"
    path = Path(args.out or Path(args.run) / f"{name}.png")
    png_path(path)
    generated = runs.write_samples(run.model, run.data, path, args.num, args.steps, args.prime)
    print(f"wrote {path}: {len(generated)} sequences of {generated.shape[1]} steps")
    if run.data.kind == "audio":  # listen to it too
        for i, sequence in enumerate(generated):
            write_wav(path.with_name(f"{path.stem}-{i}.wav"), sequence.flatten(), run.data.sample_rate)
        print(f"wrote {len(generated)} wav files at {run.data.sample_rate} Hz: {path.with_name(path.stem)}-*.wav")


def png_path(path: Path) -> None:
    """Refuse an ``--out`` that is not a writable path ending in .png (matplotlib would add the suffix itself)."""
    writable(path, "--out", directory=False)
    if path.suffix.lower() != ".png":
        raise ValueError(f"--out {path}: expected a file name ending in .png")


def cmd_reconstruct(args: argparse.Namespace) -> None:
    """Test sequences beside one-step-ahead reconstructions: x̂_t ~ p(x_t | x_{<t}, z_t)
    with z ~ q(z | x) (paper 1, Figure 4); for images the mean of 16 such draws."""
    run = open_run(args)
    x, mask = (t.to(run.device) for t in pad_batch(run.data.test[: runs.plot_count(run.data, args.num)]))
    draws = one_step_ahead(run.model.model, run.guide, x, mask, 16 if run.data.kind == "image" else 1)
    shown = int(mask.sum(1).min())
    panels = {"real test": x[:, :shown].cpu(), "reconstruction": draws.mean(0)[:, :shown].cpu()}
    path = Path(args.out or Path(args.run) / "reconstructions.png")
    png_path(path)
    plot_sequences(panels, run.data.kind, path)
    print(f"wrote {path}")


def cmd_ppc(args: argparse.Namespace) -> None:
    run = open_run(args)
    test = run.data.test[: args.num]
    rows = posterior_predictive_check(run.model, run.guide, test, run.data.kind, args.replicates, run.device)
    title = (f"posterior predictive checks of {run.config['model']} on {len(test)} test sequences of "
             f"{run.config['data']}, {args.replicates} replicates each; p = P(T(replicate) >= T(real))")  # fmt: skip
    lines = check_table(title, rows)
    print("\n".join(lines))
    out = Path(args.run)
    (out / "ppc.md").write_text("\n".join(lines) + "\n")
    plot_ppc(rows, out / "ppc.png")
    print(f"wrote {out / 'ppc.md'} and {out / 'ppc.png'}")


def cmd_bench(args: argparse.Namespace) -> None:
    """Cached vs uncached generation at paper 1's handwriting size (receptive field 316);
    with a suite (``steps``, ``scaling``, ``generation`` or ``all``), that suite."""
    device = pick_device(args.device)
    if args.suite:
        return bench_suite(args, device)
    model = benchmark.stcn_dense_setup(device).model.eval()  # untrained: the weights do not change the cost
    size = sum(p.numel() for p in model.parameters())
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
        size = sum(p.numel() for p in model.parameters())
        print(f"\nGeneration, {setups[0].name} ({size:,} parameters, receptive field {model.trunk.receptive_field}); "
              "floor: one matrix-vector (batch 1) or matrix (batch 64) product over as many weights")  # fmt: skip
        benchmark.print_generation(model, [1, 4] if quick else [1, 64], 16 if quick else args.gen_steps, device,
                                   repeats, out=lambda line: print(line, flush=True))  # fmt: skip


def add_bench(sub) -> argparse.ArgumentParser:
    b = sub.add_parser("bench", help="benchmarks: plain, cached vs uncached generation; `bench all` for every suite")
    b.add_argument("--steps", type=positive_ints, default=[1000, 4000], help="sequence lengths (default 1000,4000)")
    b.add_argument("--num", type=lambda text: positive_ints(text)[0], default=1, help="sequences generated at once")
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
        s.add_argument("--repeats", type=int, help="interleaved repeats per figure (default 5; --quick 2)")
        s.add_argument("--gen-steps", type=int, default=320, help="generated steps per timing (default 320)")
        s.add_argument("--clock", choices=list(benchmark.CLOCKS), default="wall",
                       help="wall-clock time, or this process's CPU time (less noise on a shared CPU)")  # fmt: skip
        s.add_argument("--bf16", action="store_true", help="training steps with the networks in bfloat16 (autocast)")
        s.add_argument("--device", default=argparse.SUPPRESS, choices=["auto", "cpu", "cuda"])
    b.set_defaults(func=cmd_bench, suite=None)
    return b


def cmd_compare(args: argparse.Namespace) -> None:
    """Every model of ``--models`` with every likelihood of ``--likelihoods``, each set up
    as ``train`` would with the same preset, data and seed, trained for the same time
    budget and scored on the same test split (``pyro_stcn.evaluation.compare``)."""
    if not math.isfinite(args.budget) or args.budget <= 0 or args.iw < 1:
        raise ValueError(f"--budget and --iw must be positive, got {args.budget} minutes and {args.iw} draws")
    device = pick_device(args.device)
    data_name = args.data or (PRESETS[args.preset]["data"] if args.preset else runs.RUN_DEFAULTS["data"])
    out = Path(args.out or f"runs/compare-{args.preset or data_name}")
    if args.preset:
        print(f"preset {args.preset} = {as_flags(PRESETS[args.preset])}, less what each model does not take; "
              "the time budget replaces --steps")  # fmt: skip
    with hold(out):  # one comparison per directory, as one run per run directory
        compare_in(out, args, device, data_name)


def compare_in(out: Path, args: argparse.Namespace, device: torch.device, data_name: str) -> None:
    base = {k: getattr(args, k) for k in ("preset", "data", "data_dir", "fw", "seed")}
    models = args.models or [m for m in model_names() if family_of(m).compared]
    contenders, data = [], None
    for likelihood in args.likelihoods or [None]:
        for model in models:
            settings = {**base, "model": model, "likelihood": likelihood}
            cell, data = runs.contender(settings, model, out, data, device, 60 * args.budget)  # one data load for all
            contenders.append(cell)
    print(f"comparing {len(contenders)} models on {data_name}, {args.budget:g} minutes each, on {device}; in {out}")
    scores = compare(contenders, data, 60 * args.budget, args.iw, device, progress=not args.no_progress)
    threads = torch.get_num_threads()
    title = f"{data_name}" + (f", preset {args.preset}" if args.preset else "")
    title += f", {args.budget:g} minutes of training per model on {device} ({threads} thread{'s' * (threads > 1)})"
    print(write_comparison(scores, out, title, args.iw, {m: printed_name(m) for m in models}))
    print(f"wrote {out}/: comparison.md, scores.json, validation.png, and one run directory per model")


def name_list(valid, what: str):
    """An argparse type: comma-separated names from ``valid``, repeats dropped."""

    def parse(text: str) -> list[str]:
        names = list(dict.fromkeys(text.split(",")))
        unknown = [n for n in names if n not in valid]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {unknown[0]!r}; valid: {', '.join(valid)}")
        return names

    return parse


def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 1,2,2, got {text!r}") from None


def positive_ints(text: str) -> list[int]:
    """An argparse type: comma-separated positive integers."""
    values = int_list(text)
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", choices=[*DATASETS, *FORMATS], help="a built-in data set (default digits) or a format")
    p.add_argument("--data-dir", help="where your files are (a directory; for npz, the file)")
    p.add_argument("--fw", type=int, help="speech, wav: frame width, samples per step (default 200)")


def add_train_flags(t: argparse.ArgumentParser) -> None:
    add_data_flags(t)
    t.add_argument("--binarise", choices=["static", "dynamic"], help="mnist, mnist-idx: training pixels (default "
                   "static)")  # fmt: skip
    t.add_argument("--dequantise", action="store_true", help="iamondb: uniform noise of width 1 on training offsets")
    t.add_argument("--split-lists", metavar="DIR", help="iamondb: trainset.txt, testset_v.txt, testset_f.txt "
                   "(default 80/10/10)")  # fmt: skip
    t.add_argument("--preset", choices=list(PRESETS), help="a paper experiment (pyro_stcn/presets/); flags override it")
    t.add_argument("--model", choices=model_names(), help="default stcn-dense")
    t.add_argument("--guide", choices=guide_names(), help="default: the model's own (ladder for the STCNs)")
    t.add_argument("--prior", choices=list(PRIORS), help="STCN, MS-STCN, VRNN (default dynamic; mixture needs a "
                   "guide other than ladder)")  # fmt: skip
    t.add_argument("--likelihood", choices=list(LIKELIHOODS), help="default: the one the data call for")
    t.add_argument("--components", type=int, help="gmm, handwriting: mixture components (STCN default 20)")
    t.add_argument("--objective", choices=list(OBJECTIVES), help="default linear-free-bits; iwae: the "
                   "importance-weighted bound with K draws per step (STCN, STCN-dense)")  # fmt: skip
    t.add_argument("--iw-samples", type=int, metavar="K", help=f"iwae: draws per step (default {runs.IW_SAMPLES})")
    t.add_argument("--test-iw", type=int, metavar="K", help="the final report's importance-weighted bound on the "
                   "test split: K draws of each factor (default 100; 0: none)")  # fmt: skip
    t.add_argument("--kl-gradient", choices=["control-variate", "stl", "dreg", "pathwise"],
                   help="the gradient of sampled KLs (a flow guide, a mixture prior): control-variate (default: "
                   "closed form where it exists, the rest sampled), stl (sticking the landing); for iwae, dreg "
                   "(doubly reparameterised, its default); pathwise: the plain reparameterised gradient")  # fmt: skip
    t.add_argument("--beta-rate", type=float, help="annealed: β rises by this per step (default 1e-4)")
    t.add_argument("--lam", type=float, help="free bits: λ0 in nats per latent dimension (default 0.02; paper 2: 0.5)")
    t.add_argument("--lam-half-life", type=float, help="free bits: steps to halve λ (default 500; paper 2: 300000)")
    t.add_argument("--steps", type=int, help="training steps (with --resume: the new total)")
    t.add_argument("--budget", type=float, metavar="MINUTES", help="also stop after this much training time")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--lr-decay", type=float, help="the learning rate is multiplied by this every 1000 steps")
    t.add_argument("--seed", type=int)
    t.add_argument("--valid-every", type=int)
    t.add_argument("--valid-sequences", type=int, help="validate on the first N validation sequences only")
    t.add_argument("--crop", type=int, help="train on random windows of this many steps (long sequences)")
    t.add_argument("--bf16", action="store_true", help="train the networks in bfloat16 (autocast; for GPUs with "
                   "bfloat16 tensor cores); densities, the loss, validation and evaluation stay float32")  # fmt: skip
    t.add_argument("--channels", type=int_list, help="filters per layer (STCN: one width), e.g. 64 or 96,128,192")
    t.add_argument("--blocks", type=int, help="Wavenet blocks per layer (STCN: dilations 1..2^(K-1))")
    t.add_argument("--layers", type=int, help="Wavenet: feature levels L (default 4; from an STCN preset: its layers)")
    t.add_argument("--hidden", type=int, help="width of the prior, posterior and output nets; RNN, VRNN: and the LSTM")
    t.add_argument("--output-layers", type=int, help="STCN: 1x1 conv + ReLU layers of the output net (default 2)")
    t.add_argument("--z-dims", type=int_list, help="latent sizes bottom to top, e.g. 16,8,8,4 (MS-STCN: or one for "
                   "all; VRNN: one)")  # fmt: skip
    t.add_argument("--layout", choices=list(MS_STCN_LAYOUTS), help="MS-STCN: a network layout of paper 2, app. A.1")
    t.add_argument("--strides", type=int_list, help="MS-STCN: stride of each layer, e.g. 1,2,2,2,1")
    t.add_argument("--deterministic", action="store_true", help="MS-STCN: no latent variables (paper 2's control)")
    t.add_argument("--out", help="run directory (default runs/MODEL-GUIDE-TIME)")
    t.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    t.add_argument("--checkpoint-every", type=float, metavar="MINUTES", help="also write last.pt this often (it is "
                   "written at each validation, and on SIGTERM or Ctrl-C)")  # fmt: skip
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events to the run directory "
                   "(needs the tensorboard package)")  # fmt: skip


def add_run_commands(sub) -> list[argparse.ArgumentParser]:
    """evaluate, sample, reconstruct and ppc: each reads a trained run."""
    e = sub.add_parser("evaluate", help="-ELBO, per-layer KL and the IWAE bound of a trained run")
    e.add_argument("--split", default="test", choices=["train", "valid", "test"])
    e.add_argument("--iw", type=int, metavar="K", help="also the importance-weighted bound with K samples")
    e.add_argument("--chunk", type=int, default=10, help="--iw: draws per pass (memory grows with it, not with K)")
    e.add_argument("--iw-over", choices=runs.IW_OVER, default="auto",
                   help="--iw: K draws of each factor the latents split into given x (factors: per step for STCN, "
                   "per block of the coarsest layer for MS-STCN), or of whole sequences; auto: factors where the "
                   "model's latents factorise, else sequences (default)")  # fmt: skip
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_evaluate)
    s = sub.add_parser("sample", help="generate sequences from a trained run: a PNG (and wav files for speech)")
    s.add_argument("--num", type=int, default=32, help="sequences (at most 6 for strokes and waveforms)")
    s.add_argument("--steps", type=int, help="steps to generate (default: the test sequences' length)")
    s.add_argument("--prime", type=int, default=0, metavar="K", help="continue the first K steps of test sequences")
    s.add_argument("--out", help="PNG path (default RUN/samples.png)")
    s.set_defaults(func=cmd_sample)
    r = sub.add_parser("reconstruct", help="test sequences beside their reconstructions from the posterior")
    r.add_argument("--num", type=int, default=16)
    r.add_argument("--out", help="PNG path (default RUN/reconstructions.png)")
    r.set_defaults(func=cmd_reconstruct)
    c = sub.add_parser("ppc", help="posterior predictive checks: statistics of real vs replicated test data")
    c.add_argument("--num", type=int, default=64, help="test sequences")
    c.add_argument("--replicates", type=int, default=20)
    c.set_defaults(func=cmd_ppc)
    for p in (e, s, r, c):
        p.add_argument("--run", required=True)
        p.add_argument("--seed", type=int, default=0)
    return [e, s, r, c]


def add_compare(sub) -> argparse.ArgumentParser:
    m = sub.add_parser("compare", help="train several models for the same time budget and tabulate their test scores")
    m.add_argument("--preset", choices=list(PRESETS), help="a paper experiment; each model takes what applies to it")
    add_data_flags(m)
    compared = ",".join(n for n in model_names() if family_of(n).compared)
    m.add_argument("--models", type=name_list(model_names(), "model"), help=f"comma-separated (default {compared})")
    m.add_argument("--likelihoods", type=name_list(LIKELIHOODS, "likelihood"), help="comma-separated columns")
    m.add_argument("--budget", type=float, required=True, metavar="MINUTES",
                   help="training time per model, validations included; rerun with more to train on")  # fmt: skip
    m.add_argument("--iw", type=int, default=100, metavar="K", help="IWAE draws for latent-variable models")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", help="directory (default runs/compare-PRESET or runs/compare-DATA)")
    m.add_argument("--no-progress", action="store_true", help="no progress bars")
    m.set_defaults(func=cmd_compare)
    return m


def parser() -> argparse.ArgumentParser:
    """The command line; its model and guide choices are those registered now."""
    p = argparse.ArgumentParser(prog="pyro-stcn", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model by SVI")
    add_train_flags(t)
    t.set_defaults(func=cmd_train)
    b = add_bench(sub)
    for sp in (t, *add_run_commands(sub), b, add_compare(sub)):
        sp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p


USAGE, FAILED = 2, 1  # exit codes: a flag, file or field that cannot be used; a run that failed


def main(argv: list[str] | None = None) -> None:
    """Run a command; a failure is one line on stderr and an exit code (see the module's docstring)."""
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except Interrupted as e:
        leave(str(e), 128 + e.signum)
    except (ValueError, FileNotFoundError) as e:
        leave(f"error: {e}", USAGE)
    except (Diverged, OSError) as e:  # OSError: a full disk, a file that vanished, ...
        leave(f"error: {e}", FAILED)
    except KeyboardInterrupt:  # Ctrl-C before training started, or a second one
        leave("interrupted", 128 + signal.SIGINT)


def leave(message: str, code: int) -> None:
    """Exit with ``code`` after printing ``message`` on stderr (rank 0 alone under torchrun)."""
    if distributed.is_main():
        print(message, file=sys.stderr, flush=True)
    exit_ = SystemExit(message)  # the message, for callers that catch it (the tests)
    exit_.code = code
    raise exit_


if __name__ == "__main__":
    main()
