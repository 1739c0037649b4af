"""``pyro-stcn compare``: models side by side for one time budget (:mod:`pyro_stcn.evaluation.compare`)."""

import argparse
import math
from pathlib import Path

import torch

from pyro_stcn import runs
from pyro_stcn.cli.options import add_data_flags, name_list, pick_device
from pyro_stcn.evaluation.compare import compare, write_comparison
from pyro_stcn.nets.likelihoods import LIKELIHOODS
from pyro_stcn.runs.presets import PRESETS, as_flags
from pyro_stcn.runs.registry import family_of, model_names, printed_name
from pyro_stcn.training.lock import hold


def cmd_compare(args: argparse.Namespace) -> None:
    """Every model of ``--models`` with every likelihood of ``--likelihoods``, each set up
    as ``train`` would with the same preset, data and seed, trained for the same time
    budget and scored on the same test split (``pyro_stcn.evaluation.compare``)."""
    if not math.isfinite(args.budget) or args.budget <= 0 or args.iw < 1:
        raise ValueError(f"--budget and --iw must be positive, got {args.budget} minutes and {args.iw} draws")
    device = pick_device(args.device)
    data_name = args.data or (PRESETS[args.preset]["data"] if args.preset else runs.RunConfig.data)
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
