"""pyro-stcn command line: train, evaluate and sample STCN models.

    python run.py train                       # STCN-dense + ladder guide on binarised digits
    python run.py evaluate --run runs/NAME    # test -ELBO and per-layer KL
    python run.py sample --run runs/NAME      # a PNG of generated sequences

``python run.py COMMAND --help`` lists every option.
"""

import argparse
import dataclasses
import json
import sys
import time
from functools import partial
from pathlib import Path

import pyro
import torch

from guides import GUIDES, IndependentGuide, make_guide
from models import MODELS, PRIORS, STCN, STCNConfig, make_model
from pyro_stcn.checkpoint import load_checkpoint
from pyro_stcn.data import DATASETS, Splits
from pyro_stcn.elbo import OBJECTIVES, make_objective
from pyro_stcn.evaluate import ElboReport, evaluate_elbo
from pyro_stcn.generate import sample_sequences
from pyro_stcn.plots import plot_image_grids, plot_layer_kl, plot_losses, read_log
from pyro_stcn.reference import independent_bernoulli_nll
from pyro_stcn.schedules import halving, linear_warmup
from pyro_stcn.train import TrainConfig, train

# The default run: small enough for 2 CPU cores in under 5 minutes.
DIGITS_MODEL = STCNConfig(x_dim=1, likelihood="bernoulli", z_dims=[16, 8, 8, 4], channels=32, blocks=4, hidden=32)
DIGITS_TRAIN = TrainConfig(steps=1500, batch_size=32, lr=2e-3, lr_decay=0.8, valid_every=100)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda, but torch sees no CUDA device (torch.cuda.is_available() is False)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def build(run_config: dict, device: torch.device) -> tuple[STCN, IndependentGuide]:
    """Model, guide and objective from a run's config (as saved in config.json)."""
    pyro.clear_param_store()
    model = make_model(run_config["model"], STCNConfig(**run_config["stcn"])).to(device)
    guide = make_guide(run_config["guide"], model).to(device)
    return model, guide


def schedules_for(run_config: dict) -> dict:
    """β warm-up for ``annealed``, halving λ for the free-bits objectives."""
    objective = run_config["objective"]
    if objective == "annealed":
        return {"beta": partial(linear_warmup, rate=run_config["beta_rate"])}
    if objective in ("free-bits", "linear-free-bits"):
        return {"lam": partial(halving, start=run_config["lam"], half_life=run_config["lam_half_life"])}
    return {}


def report_lines(title: str, report: ElboReport) -> list[str]:
    lines = [
        f"{title}: -ELBO = {report.per_sequence:.2f} ± {report.stderr:.2f} nats per sequence, "
        f"{report.per_step:.4f} nats per step ({report.sequences} sequences, {report.steps} steps)",
        "  KL per layer (nats per sequence):",
    ]
    lines += [f"    {name:>4}  {kl:8.3f}" for name, kl in report.kl_per_sequence.items()]
    return lines


STCN_FLAGS = ["prior", "channels", "blocks", "hidden", "z_dims"]
TRAIN_FLAGS = ["steps", "batch_size", "lr", "seed", "valid_every"]
RUN_DEFAULTS = {
    "data": "digits",
    "model": "stcn-dense",
    "guide": "ladder",
    "objective": "elbo",
    "beta_rate": 1e-4,
    "lam": 0.5,
    "lam_half_life": 300_000,
}


def given(args: argparse.Namespace, names) -> dict:
    """The flags among ``names`` that the user set."""
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def cmd_train(args: argparse.Namespace) -> None:
    if args.resume:
        run_dir = Path(args.resume)
        config_path = run_dir / "config.json"
        if not config_path.is_file():
            sys.exit(f"error: --resume {run_dir}: no config.json there, so it is not a run directory")
        changed = set(given(args, [*STCN_FLAGS, *TRAIN_FLAGS, *RUN_DEFAULTS, "out"])) - {"steps"}
        if changed:
            flags = ", ".join(f"--{n.replace('_', '-')}" for n in sorted(changed))
            sys.exit(
                f"error: --resume continues {run_dir} with its own config.json; only --steps, --device "
                f"and --no-progress may be given with it, not {flags}"
            )
        run_config = json.loads(config_path.read_text())
        if args.steps:  # train a finished run for longer
            run_config["train"]["steps"] = args.steps
            config_path.write_text(json.dumps(run_config, indent=2))
    else:
        stcn = dataclasses.replace(DIGITS_MODEL, **given(args, STCN_FLAGS))
        train_config = dataclasses.replace(DIGITS_TRAIN, **given(args, TRAIN_FLAGS))
        run_config = {
            **RUN_DEFAULTS,
            **given(args, RUN_DEFAULTS),
            "stcn": dataclasses.asdict(stcn),
            "train": dataclasses.asdict(train_config),
        }
        name = f"{run_config['model']}-{run_config['guide']}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path(args.out or f"runs/{name}")
        if (run_dir / "last.pt").exists():
            sys.exit(f"error: {run_dir} already holds a run; continue it with --resume {run_dir}")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(run_config, indent=2))

    device = pick_device(args.device)
    data = DATASETS[run_config["data"]]()
    pyro.set_rng_seed(run_config["train"]["seed"])  # the seed sets the initial weights too
    model, guide = build(run_config, device)
    objective = make_objective(run_config["objective"])
    print(
        f"training {run_config['model']} with the {run_config['guide']} guide and the "
        f"{run_config['stcn']['prior']} prior on {run_config['data']} ({len(data.train)} train sequences) "
        f"by {run_config['objective']} on {device}; run directory {run_dir}"
    )
    result = train(
        model.model,
        guide,
        {"model": model, "guide": guide},
        objective,
        data,
        TrainConfig(**run_config["train"]),
        run_dir,
        schedules=schedules_for(run_config),
        device=device,
        run_config=run_config,
        progress=not args.no_progress,
    )
    stop = "early stop" if result.stopped_early else "step budget"
    print(
        f"trained {result.last_step} steps in {result.seconds:.0f} s ({stop}); best validation "
        f"-ELBO {result.best_valid:.2f} nats per sequence at step {result.best_step}"
    )

    test = evaluate_elbo(model.model, guide, data.test, device=device)
    reference = independent_bernoulli_nll(data.train, data.test)
    lines = report_lines("test", test) + [
        f"reference: independent-Bernoulli pixels fitted on the training split: "
        f"NLL = {reference:.2f} nats per sequence on the same test split",
    ]
    print("\n".join(lines))
    (run_dir / "results.txt").write_text("\n".join(lines) + "\n")

    log = read_log(run_dir / "log.csv")
    plot_losses(log, run_dir / "loss.png", baseline=reference)
    plot_layer_kl(log, run_dir / "kl.png")
    write_samples(model, data, run_dir / "samples.png", num=32, device=device)
    print(f"wrote {run_dir}/: config.json, best.pt, last.pt, log.csv, results.txt, loss.png, kl.png, samples.png")


def write_samples(model: STCN, data: Splits, path: Path, num: int, device: torch.device) -> None:
    real = torch.stack(data.test[:num])
    steps, x_dim = real.shape[1:]
    generated = sample_sequences(model.model, num, steps, x_dim, device=device)
    side = int(steps**0.5)
    plot_image_grids({"generated": generated, "real test digits": real}, side, path)


def load_run(run_dir: str, device: torch.device) -> tuple[dict, STCN, IndependentGuide]:
    ckpt = load_checkpoint(Path(run_dir) / "best.pt", device)
    run_config = ckpt["run_config"]
    model, guide = build(run_config, device)
    model.load_state_dict(ckpt["model"])
    guide.load_state_dict(ckpt["guide"])
    model.eval(), guide.eval()
    return run_config, model, guide


def cmd_evaluate(args: argparse.Namespace) -> None:
    device = pick_device(args.device)
    run_config, model, guide = load_run(args.run, device)
    data = DATASETS[run_config["data"]]()
    report = evaluate_elbo(model.model, guide, getattr(data, args.split), device=device, seed=args.seed)
    print("\n".join(report_lines(f"{run_config['model']} on {run_config['data']}, {args.split} split", report)))


def cmd_sample(args: argparse.Namespace) -> None:
    device = pick_device(args.device)
    run_config, model, guide = load_run(args.run, device)
    torch.manual_seed(args.seed)
    path = Path(args.out or Path(args.run) / "samples.png")
    write_samples(model, DATASETS[run_config["data"]](), path, num=args.num, device=device)
    print(f"wrote {path}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model by SVI")
    t.add_argument("--data", choices=list(DATASETS), help="dataset (default digits)")
    t.add_argument("--model", choices=list(MODELS), help="default stcn-dense")
    t.add_argument("--guide", choices=list(GUIDES), help="default ladder")
    t.add_argument("--prior", choices=list(PRIORS), help="default dynamic")
    t.add_argument("--objective", choices=list(OBJECTIVES), help="default elbo")
    t.add_argument("--beta-rate", type=float, help="annealed: β rises by this per step (default 1e-4)")
    t.add_argument("--lam", type=float, help="free bits: λ0 in nats per latent unit (default 0.5)")
    t.add_argument("--lam-half-life", type=float, help="free bits: steps to halve λ (default 300000)")
    t.add_argument("--steps", type=int, help="training steps (with --resume: the new total)")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--valid-every", type=int)
    t.add_argument("--channels", type=int, help="filters of every Wavenet block")
    t.add_argument("--blocks", type=int, help="K, blocks per layer (dilations 1..2^(K-1))")
    t.add_argument("--hidden", type=int, help="width of the prior, posterior and output nets")
    t.add_argument(
        "--z-dims", type=lambda s: [int(v) for v in s.split(",")], help="latent sizes bottom to top, e.g. 16,8,8,4"
    )
    t.add_argument("--out", help="run directory (default runs/MODEL-GUIDE-TIME)")
    t.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="-ELBO and per-layer KL of a trained run")
    e.add_argument("--run", required=True)
    e.add_argument("--split", default="test", choices=["train", "valid", "test"])
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("sample", help="a PNG of sequences generated by a trained run")
    s.add_argument("--run", required=True)
    s.add_argument("--num", type=int, default=32)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", help="PNG path (default RUN/samples.png)")
    s.set_defaults(func=cmd_sample)

    for sp in (t, e, s):
        sp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
