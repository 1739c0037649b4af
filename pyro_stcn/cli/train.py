"""``pyro-stcn train``: settings from flags (and a preset), a new or resumed run, and its report."""

import argparse
import math
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from pyro_stcn import runs
from pyro_stcn.cli.options import add_data_flags, flag, int_list, pick_device, writable
from pyro_stcn.cli.results import score_lines
from pyro_stcn.data import Splits
from pyro_stcn.evaluation.baselines import independent_bernoulli_nll
from pyro_stcn.evaluation.plots import plot_layer_kl, plot_losses, read_log
from pyro_stcn.inference import OBJECTIVES
from pyro_stcn.models import MS_STCN_LAYOUTS, PRIORS
from pyro_stcn.nets import parameter_count
from pyro_stcn.nets.compiled import compile_problem
from pyro_stcn.nets.likelihoods import LIKELIHOODS
from pyro_stcn.runs.config import RunConfig
from pyro_stcn.runs.presets import PRESETS, apply_preset, as_flags
from pyro_stcn.runs.registry import guide_names, model_names
from pyro_stcn.training import Callback, PeriodicCheckpoint, ProgressBar, distributed
from pyro_stcn.training.lock import hold
from pyro_stcn.training.tensorboard import TensorBoard


def settings_of(args: argparse.Namespace, quiet: bool = False) -> dict:
    """The train flags as settings for :func:`pyro_stcn.runs.api.new_run_config`, the
    preset applied (and, unless ``quiet``, printed)."""
    settings = dict(vars(args))
    if settings.get("budget") is not None:
        if not 0 < settings["budget"] < math.inf:
            raise ValueError(f"--budget: expected a positive number of minutes, got {settings['budget']:g}")
        settings["budget"] *= 60  # minutes on the command line, seconds in TrainConfig
    if not args.preset:
        return settings
    settings, left_out = apply_preset(settings, args.preset)
    if not quiet:
        print(f"preset {args.preset} = {as_flags(PRESETS[args.preset])} (flags you give override these)")
        if left_out:
            print(f"  left out for your --data/--model: {', '.join(flag(k) for k in left_out)}")
    return settings


# Only these may be given with --resume; the run's own config.json holds the rest.
RESUME_FLAGS = {"resume", "steps", "device", "no_progress", "tensorboard", "checkpoint_every", "func", "command"}


def resumed(args: argparse.Namespace, device: torch.device) -> tuple:
    """The config, model, guide, data and directory of the run ``--resume`` continues."""
    changed = sorted(k for k, v in vars(args).items() if k not in RESUME_FLAGS and v is not None and v is not False)
    if changed:
        raise ValueError(
            f"--resume continues {args.resume} with its own config.json; only --steps, --device, --no-progress, "
            f"--tensorboard and --checkpoint-every may be given with it, not {', '.join(flag(k) for k in changed)}"
        )
    run_config, model, guide = runs.resume_run(args.resume, args.steps, device)
    if distributed.is_main() and not (Path(args.resume) / "last.pt").exists():
        print(f"{args.resume} has no last.pt (it stopped before its first step ended): training it from step 0")
    return run_config, model, guide, runs.load_data(run_config), Path(args.resume)


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
    name = f"{run_config.model}-{run_config.guide}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(args.out or f"runs/{distributed.from_main(name)}")  # the ranks' clocks differ
    writable(run_dir, "--out", directory=True)
    with hold(run_dir):
        model, guide = runs.start_run(run_config, run_dir, device)
        train_and_report_locked(args, device, main, run_config, model, guide, data, run_dir)


def compiled_note(run_config: RunConfig, device: torch.device) -> str:
    """What ``--compile`` does on this machine, for the line that starts a run."""
    if not run_config.train.compile:
        return ""
    problem = compile_problem(device)
    return ", networks compiled by torch.compile" if problem is None else f" (--compile: {problem}; uncompiled)"


def train_and_report_locked(args: argparse.Namespace, device: torch.device, main: bool, run_config: dict,
                            model: nn.Module, guide: nn.Module, data: Splits, run_dir: Path) -> None:  # fmt: skip
    prior = f" and the {run_config.net.prior} prior" if hasattr(run_config.net, "prior") else ""
    processes = f" ({distributed.size()} processes)" if distributed.active() else ""
    if main:
        print(
            f"training {run_config.model} ({parameter_count(model, guide):,} parameters) with the "
            f"{run_config.guide} guide{prior} on {run_config.data} ({len(data.train)} train sequences) by "
            f"{run_config.objective} ({run_config.kl_gradient} KL gradient) on "
            f"{device}{processes}{compiled_note(run_config, device)}; run directory {run_dir}"
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
    draws = run_config.test_iw
    if scores.neg_elbo.kl_per_sequence and draws:
        with tqdm(total=len(data.test), desc=f"IWAE, K = {draws}", disable=args.no_progress) as bar:
            scores = runs.score(run, "test", draws, progress=bar.update)
    lines, reference = score_lines("test", scores, run_config.model, draws), None
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
    t.add_argument("--compile", action="store_true", help="compile the networks with torch.compile (not Pyro's "
                   "tracing; faster on some GPUs, often slower on a CPU: docs/guides/speed.md)")  # fmt: skip
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
                   "written at each validation, and on SIGTERM, Ctrl-C, SIGHUP, SIGUSR1 or SIGUSR2)")  # fmt: skip
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events to the run directory "
                   "(needs the tensorboard package)")  # fmt: skip
