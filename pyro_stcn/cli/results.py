"""``evaluate``, ``sample``, ``reconstruct`` and ``ppc``: what a trained run is worth and what it draws."""

import argparse
from pathlib import Path

import torch
from tqdm import tqdm

from pyro_stcn import runs
from pyro_stcn.cli.options import flag, pick_device, writable
from pyro_stcn.data import pad_batch
from pyro_stcn.data.wav import write_wav
from pyro_stcn.evaluation import bounds
from pyro_stcn.evaluation.plots import plot_kl_bars, plot_ppc, plot_sequences
from pyro_stcn.evaluation.predictive import check_table, one_step_ahead, posterior_predictive_check
from pyro_stcn.training.config import check_seed


def open_run(args: argparse.Namespace) -> runs.Run:
    """The run in ``--run`` (its ``--checkpoint``) on ``--device``, with the random state
    set from ``--seed``; the numbers given checked first."""
    check_seed(args.seed)
    for name, what in COUNTS.items():
        if getattr(args, name, None) is not None and getattr(args, name) < 1:
            raise ValueError(f"{flag(name)} {getattr(args, name)}: expected at least 1 {what}")
    run = runs.load_run(args.run, pick_device(args.device), args.checkpoint)
    torch.manual_seed(args.seed)
    return run


# The counts these commands take, checked before the run is loaded (the library checks those it is given too).
COUNTS = {"replicates": "replicate of each sequence", "num": "sequence"}


def iw_meaning(scores: bounds.Scores) -> str:
    """What the -IWAE line's factorisation means, in words."""
    if scores.iwae_over == "per sequence":
        return "K draws of all of a sequence's latents at once; ≤ the -ELBO, an upper bound on -log p(x)"
    return (f"K draws of the latents of each {scores.iwae_over.removeprefix('per ')}, weighted on their own, which "
            "given x are independent of the others'; ≤ the -ELBO, an upper bound on -log p(x)")  # fmt: skip


def score_lines(title: str, scores: bounds.Scores, model: str, draws: int | None) -> list[str]:
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
    run = open_run(args)
    with tqdm(total=len(getattr(run.data, args.split)), desc=f"IWAE, K = {args.iw}",
              disable=args.no_progress or not args.iw) as bar:  # fmt: skip
        scores = runs.score(run, args.split, args.iw, args.chunk, args.seed, progress=bar.update, iw_over=args.iw_over)
    title = f"{run.config.model} on {run.config.data}, {args.split} split"
    if args.checkpoint != "best.pt":
        title += f" ({args.checkpoint})"
    lines = score_lines(title, scores, run.config.model, args.iw)
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
    title = (f"posterior predictive checks of {run.config.model} on {len(test)} test sequences of "
             f"{run.config.data}, {args.replicates} replicates each; p = P(T(replicate) >= T(real))")  # fmt: skip
    lines = check_table(title, rows)
    print("\n".join(lines))
    out = Path(args.run)
    (out / "ppc.md").write_text("\n".join(lines) + "\n")
    plot_ppc(rows, out / "ppc.png")
    print(f"wrote {out / 'ppc.md'} and {out / 'ppc.png'}")


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
        p.add_argument("--checkpoint", choices=["best.pt", "last.pt"], default="best.pt",
                       help="the weights of the best validation (default), or of the latest step")  # fmt: skip
        p.add_argument("--seed", type=int, default=0)
    return [e, s, r, c]
