"""pyro-stcn command line: train, evaluate and sample STCN models.

    python run.py train                       # STCN-dense + ladder guide on binarised digits
    python run.py evaluate --run runs/NAME    # test -ELBO and per-layer KL
    python run.py evaluate --run runs/NAME --iw 1000   # and the importance-weighted bound
    python run.py sample --run runs/NAME      # a PNG of generated sequences
    python run.py sample --run runs/NAME --prime 20   # continuations of real test sequences
    python run.py reconstruct --run runs/NAME # test sequences beside their reconstructions
    python run.py ppc --run runs/NAME         # posterior predictive checks
    python run.py bench                       # cached vs uncached generation time
    python run.py compare --budget 3          # baselines and STCNs, 3 minutes each, one table

``python run.py COMMAND --help`` lists every option.
"""

import argparse
import dataclasses
import json
import math
import sys
import time
from functools import partial
from pathlib import Path

import pyro
import torch
from torch import Tensor, nn
from tqdm import tqdm

from pyro_stcn.guides import GUIDES, default_guide, make_guide
from pyro_stcn.models import (
    MODELS,
    MS_STCN_LAYOUTS,
    PRIORS,
    ModelConfig,
    MSSTCNConfig,
    RNNConfig,
    STCNConfig,
    VRNNConfig,
    WavenetConfig,
    make_model,
)
from pyro_stcn.models.ms_stcn import default_dilations
from pyro_stcn.benchmark import time_generation
from pyro_stcn.checkpoint import load_checkpoint
from pyro_stcn.compare import Contender, compare, write_comparison
from pyro_stcn.data import DATASETS, FORMATS, Splits, pad_batch
from pyro_stcn.data.wav import write_wav
from pyro_stcn.elbo import OBJECTIVES, bottom_first, make_objective
from pyro_stcn.evaluate import ElboReport, evaluate_elbo, evaluate_iwae
from pyro_stcn.likelihoods import LIKELIHOODS, SUITABLE
from pyro_stcn.normalise import Standardisation
from pyro_stcn.plots import plot_kl_bars, plot_layer_kl, plot_losses, plot_ppc, plot_sequences, read_log
from pyro_stcn.predictive import one_step_ahead, posterior_predictive_check
from pyro_stcn.presets import PRESETS, as_flags
from pyro_stcn.reference import independent_bernoulli_nll
from pyro_stcn.schedules import halving, linear_warmup
from pyro_stcn.train import TrainConfig, train

# Sized for the default run (digits on 2 CPU cores in under 5 minutes); other data get the
# same sizes unless flags say otherwise.
DEFAULT_STCN = STCNConfig(z_dims=[16, 8, 8, 4], channels=32, blocks=4, hidden=32)
DEFAULT_TRAIN = TrainConfig(steps=1500, batch_size=32, lr=2e-3, lr_decay=0.8, valid_every=100)
# The baselines, sized like the default STCN: Wavenet is its trunk without latents; the
# recurrent models have parameter counts of the same order.
DEFAULT_WAVENET = WavenetConfig(layers=4, channels=32, blocks=4, hidden=32)
DEFAULT_RNN = RNNConfig(hidden=128)
DEFAULT_VRNN = VRNNConfig(hidden=64, z_dim=16)
DEFAULT_NETS = {"stcn": DEFAULT_STCN, "stcn-dense": DEFAULT_STCN, "wavenet": DEFAULT_WAVENET}
DEFAULT_NETS |= {"wavenet-dense": DEFAULT_WAVENET, "rnn": DEFAULT_RNN, "vrnn": DEFAULT_VRNN}
# MS-STCN without --layout: paper 2's IAM-OnDB layout (strides, dilations) at CPU size.
DEFAULT_MS_STCN = MSSTCNConfig(
    strides=[1, 2, 2, 2, 1], channels=[32] * 5, z_dims=[8, 8, 8, 4, 2], dilations=default_dilations([1, 2, 2, 2, 1], 4)
)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda, but torch sees no CUDA device (torch.cuda.is_available() is False)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def build(run_config: dict, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """Model and guide from a run's config (as saved in config.json)."""
    pyro.clear_param_store()
    config = MODELS[run_config["model"]](**run_config["net"])
    model = make_model(run_config["model"], config).to(device)
    guide = make_guide(run_config["guide"], model).to(device)
    return model, guide


# The network flags each model takes (besides --likelihood).
MODEL_FLAGS = {
    "stcn": {"prior", "channels", "blocks", "hidden", "z_dims", "output_layers", "components"},
    "wavenet": {"channels", "blocks", "layers", "hidden", "output_layers", "components"},
    "rnn": {"hidden", "output_layers", "components"},
    "vrnn": {"hidden", "z_dims", "output_layers", "components"},
    "ms-stcn": {"channels", "blocks", "z_dims", "layout", "strides", "deterministic", "components"},
}
MODEL_FLAGS["stcn-dense"], MODEL_FLAGS["wavenet-dense"] = MODEL_FLAGS["stcn"], MODEL_FLAGS["wavenet"]
# Models whose network sizes mean the same things: a preset's sizes carry over within a family only.
FAMILIES = {"stcn": "tcn", "stcn-dense": "tcn", "wavenet": "tcn", "wavenet-dense": "tcn"}
FAMILIES |= {"rnn": "rnn", "vrnn": "rnn", "ms-stcn": "ms-stcn"}


def net_config(args: argparse.Namespace, model: str, data: Splits) -> ModelConfig:
    """The network's sizes from the flags, a layout or the defaults; x_dim and the input
    standardisation always come from the data, the likelihood from the data or the flag."""
    likelihood = args.likelihood or data.likelihood
    if likelihood not in SUITABLE[data.likelihood]:
        sys.exit(
            f"error: --likelihood {likelihood} does not suit --data {args.data or RUN_DEFAULTS['data']}, "
            f"whose values call for {' or '.join(SUITABLE[data.likelihood])}"
        )
    units = Standardisation.fit(data.train, likelihood)  # training split only
    from_data = {"x_dim": data.x_dim, "likelihood": likelihood, "shift": units.shift, "scale": units.scale}
    flags = {f: getattr(args, f) for f in [*NET_SIZE_FLAGS, "deterministic"]}
    chosen = [f for f, v in flags.items() if v is not None and v is not False]  # a zero counts as given
    wrong = [f for f in chosen if f not in MODEL_FLAGS[model]]
    if wrong:
        takes = ", ".join("--" + f.replace("_", "-") for f in sorted(MODEL_FLAGS[model]))
        sys.exit(f"error: --{wrong[0].replace('_', '-')} does not apply to --model {model}, which takes {takes}")
    for flag in ("channels", "blocks", "layers", "hidden", "z_dims", "components"):
        values = getattr(args, flag)
        if values is not None and min(values if isinstance(values, list) else [values]) < 1:
            sys.exit(f"error: --{flag.replace('_', '-')} must be positive, got {values}")
    per_layer = {"ms-stcn": {"channels", "z_dims"}, "stcn": {"z_dims"}, "stcn-dense": {"z_dims"}}.get(model, set())
    for flag in ("channels", "z_dims"):
        values = getattr(args, flag)
        if values and len(values) > 1 and flag not in per_layer:
            sys.exit(f"error: --model {model} takes one value for --{flag.replace('_', '-')}, got {len(values)}")
    sizes = given(args, ["prior", "blocks", "hidden", "z_dims", "components", "output_layers", "layers"])
    if args.channels:
        sizes["channels"] = args.channels[0]
    if model == "vrnn" and "z_dims" in sizes:
        sizes["z_dim"] = sizes.pop("z_dims")[0]
    if model != "ms-stcn":
        return dataclasses.replace(DEFAULT_NETS[model], **sizes, **from_data)
    base = MS_STCN_LAYOUTS[args.layout] if args.layout else DEFAULT_MS_STCN
    strides = args.strides or base.strides
    layers = len(strides)

    def per_layer(values: list[int] | None, default: list[int], flag: str) -> list[int]:
        if values is None and len(default) != layers:
            source = f"layout {args.layout}" if args.layout else "default"
            sys.exit(f"error: --strides gives {layers} layers; give {flag} too (the {source} has {len(default)})")
        values = values or default
        if len(values) == 1:
            return values * layers
        if len(values) != layers:
            sys.exit(f"error: {flag} has {len(values)} values for {layers} layers (--strides {strides})")
        return values

    # A layout's own dilations stand unless the layers or their block count change.
    same_layout = strides == base.strides and args.blocks in (None, len(base.dilations[0]))
    dilations = base.dilations if same_layout else default_dilations(strides, args.blocks or len(base.dilations[0]))

    return dataclasses.replace(
        base,
        strides=strides,
        channels=per_layer(args.channels, base.channels, "--channels"),
        z_dims=per_layer(args.z_dims, base.z_dims, "--z-dims"),
        dilations=dilations,
        latent=not args.deterministic,
        components=args.components or base.components,
        **from_data,
    )


def schedules_for(run_config: dict) -> dict:
    """β warm-up for ``annealed``, halving λ for the free-bits objectives."""
    objective = run_config["objective"]
    if objective == "annealed":
        return {"beta": partial(linear_warmup, rate=run_config["beta_rate"])}
    if objective in ("free-bits", "linear-free-bits"):
        return {"lam": partial(halving, start=run_config["lam"], half_life=run_config["lam_half_life"])}
    return {}


def report_lines(title: str, report: ElboReport, model: str) -> list[str]:
    """The -ELBO and, in the layout of paper 2's Table 2, the KL of each layer."""
    lines = [
        f"{title}: -ELBO = {report.per_sequence:.2f} ± {report.stderr:.2f} nats per sequence, "
        f"{report.per_step:.4f} nats per step ({report.sequences} sequences, {report.steps} steps)"
    ]
    if not report.kl_per_sequence:
        return lines + ["no latent variables: this -ELBO is the exact negative log-likelihood"]
    names = bottom_first(report.kl_per_sequence)
    kls = [report.kl_per_sequence[n] for n in names]
    return lines + [
        "KL of each latent layer, nats per sequence (bottom layer first):",
        "| model | " + " | ".join(names) + " | total |",
        "|---" * (len(names) + 2) + "|",
        f"| {model} | " + " | ".join(f"{kl:.3f}" for kl in kls) + f" | {sum(kls):.3f} |",
    ]


NET_SIZE_FLAGS = ["prior", "channels", "blocks", "layers", "hidden", "z_dims", "layout", "strides"]
NET_SIZE_FLAGS += ["components", "output_layers"]
NET_FLAGS = NET_SIZE_FLAGS + ["likelihood"]
TRAIN_FLAGS = ["steps", "batch_size", "lr", "lr_decay", "seed", "valid_every", "valid_sequences", "crop"]
RUN_DEFAULTS = {
    "data": "digits",
    "model": "stcn-dense",
    "objective": "elbo",
    "beta_rate": 1e-4,
    "lam": 0.5,
    "lam_half_life": 300_000,
}


def given(args: argparse.Namespace, names) -> dict:
    """The flags among ``names`` that the user set."""
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def new_run_config(args: argparse.Namespace, quiet: bool = False, data: Splits | None = None) -> tuple[dict, Splits]:
    """A new run's config (as config.json holds it) from the flags, the preset and the
    defaults, in that order of precedence; and the run's data (loaded unless given)."""
    if args.preset:
        apply_preset(args, args.preset, quiet)
    run_config = {**RUN_DEFAULTS, **given(args, RUN_DEFAULTS), **given(args, ["preset"])}
    run_config["guide"] = args.guide or default_guide(run_config["model"])
    run_config["data_args"] = data_args(args, run_config["data"])
    data = load_data(run_config) if data is None else data
    run_config["net"] = dataclasses.asdict(net_config(args, run_config["model"], data))
    run_config["train"] = dataclasses.asdict(dataclasses.replace(DEFAULT_TRAIN, **given(args, TRAIN_FLAGS)))
    return run_config, data


def cmd_train(args: argparse.Namespace) -> None:
    if args.resume:
        run_dir = Path(args.resume)
        config_path = run_dir / "config.json"
        if not config_path.is_file():
            sys.exit(f"error: --resume {run_dir}: no config.json there, so it is not a run directory")
        changed = set(given(args, [*NET_FLAGS, *TRAIN_FLAGS, *RUN_DEFAULTS, "out", "fw", "data_dir", "binarise"]))
        changed |= set(given(args, ["guide", "preset", "split_lists"]))
        changed -= {"steps"}
        changed |= {flag for flag in ("deterministic", "dequantise") if getattr(args, flag)}
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
        data = load_data(run_config)
    else:
        run_config, data = new_run_config(args)
        name = f"{run_config['model']}-{run_config['guide']}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path(args.out or f"runs/{name}")
        if (run_dir / "last.pt").exists():
            sys.exit(f"error: {run_dir} already holds a run; continue it with --resume {run_dir}")

    device = pick_device(args.device)
    pyro.set_rng_seed(run_config["train"]["seed"])  # the seed sets the initial weights too
    model, guide = build(run_config, device)
    if not args.resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(run_config, indent=2))
    objective = make_objective(run_config["objective"])
    prior = f" and the {run_config['net']['prior']} prior" if "prior" in run_config["net"] else ""
    size = sum(p.numel() for m in (model, guide) for p in m.parameters())
    print(
        f"training {run_config['model']} ({size:,} parameters) with the {run_config['guide']} guide{prior} "
        f"on {run_config['data']} ({len(data.train)} train sequences) by {run_config['objective']} on {device}; "
        f"run directory {run_dir}"
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
    stop = "early stop" if result.stopped_early else "time budget" if result.out_of_time else "step budget"
    print(
        f"trained {result.last_step} steps in {result.seconds:.0f} s ({stop}); best validation "
        f"-ELBO {result.best_valid:.2f} nats per sequence at step {result.best_step}"
    )

    test = evaluate_elbo(model.model, guide, data.test, device=device)
    lines, reference = report_lines("test", test, run_config["model"]), None
    if data.likelihood == "bernoulli":
        reference = independent_bernoulli_nll(data.train, data.test)
        lines.append(
            f"reference: independent-Bernoulli pixels fitted on the training split: "
            f"NLL = {reference:.2f} nats per sequence on the same test split"
        )
    print("\n".join(lines))
    (run_dir / "results.txt").write_text("\n".join(lines) + "\n")

    log = read_log(run_dir / "log.csv")
    plot_losses(log, run_dir / "loss.png", baseline=reference)
    plot_layer_kl(log, run_dir / "kl.png")
    torch.manual_seed(0)
    write_samples(model, data, run_dir / "samples.png", num=32)
    print(f"wrote {run_dir}/: config.json, best.pt, last.pt, log.csv, results.txt, loss.png, kl.png, samples.png")


DATA_SPECIFIC = ["fw", "binarise", "dequantise", "split_lists", "likelihood", "components", "crop"]


def apply_preset(args: argparse.Namespace, name: str, quiet: bool = False) -> None:
    """Fill the flags the user did not give from the preset ``name``. Where the user
    picks other data, the preset's settings for its own data are left out; where they
    pick another model, the network sizes it does not take (all of them for a model of
    another family: RNNs for a TCN preset, say) and a guide that does not fit it.
    A Wavenet given an STCN preset takes as many feature levels as it has latent layers."""
    preset = dict(PRESETS[name])
    model = args.model or preset["model"]
    left_out = []
    if args.data is not None and args.data != preset["data"]:
        left_out += [k for k in DATA_SPECIFIC if k in preset]
    if FAMILIES[model] != FAMILIES[preset["model"]]:
        left_out += [k for k in NET_SIZE_FLAGS if k in preset and k != "components"]
    else:
        left_out += [k for k in NET_SIZE_FLAGS if k in preset and k not in MODEL_FLAGS[model]]
        if model in ("wavenet", "wavenet-dense") and "z_dims" in preset and args.layers is None:
            args.layers = len(preset["z_dims"])
    if "guide" in preset and default_guide(model) != default_guide(preset["model"]):
        left_out.append("guide")
    for dest, value in preset.items():
        if dest not in left_out and (getattr(args, dest) is None or getattr(args, dest) is False):
            setattr(args, dest, value)
    if not quiet:
        print(f"preset {name} = {as_flags(preset)} (flags you give override these)")
        if left_out:
            print(f"  left out for your --data/--model: {', '.join('--' + k.replace('_', '-') for k in left_out)}")


def write_samples(model: nn.Module, data: Splits, path: Path, num: int, steps: int | None = None,
                  prime: int = 0) -> Tensor:  # fmt: skip
    """Sequences generated by the cached sampler beside real test ones, drawn in the
    data's own form; with ``prime`` K, the generated ones continue the first K steps of
    those test sequences. Returns the generated ``[num, steps, x_dim]``."""
    steps = steps or len(data.test[0])
    if prime >= steps:
        sys.exit(f"error: --prime {prime} leaves nothing to generate in {steps} steps; give more --steps")
    long_enough = [s for s in data.test if len(s) >= max(prime, 1)]
    if not long_enough:
        sys.exit(f"error: --prime {prime}: no test sequence has that many steps (longest {max(map(len, data.test))})")
    real = long_enough[: plot_count(data.likelihood, num)]
    device = next(model.parameters()).device
    given = torch.stack([s[:prime] for s in real]).to(device) if prime else None
    generated = model.generate(len(real), steps, prime=given)
    shown = min(steps, min(len(s) for s in real))
    title = f"first {prime} steps given, then generated" if prime else "generated"
    panels = {title: generated.cpu(), "real test": torch.stack([s[:shown] for s in real])}
    if data.likelihood == "bernoulli" and shown != steps:  # images: both panels whole images
        panels = {title: generated.cpu()}
    plot_sequences(panels, data.likelihood, path, primed=prime)
    return generated


def load_data(run_config: dict) -> Splits:
    """The run's data set, with its options (``--fw``, ``--data-dir``)."""
    return {**DATASETS, **FORMATS}[run_config["data"]](**run_config.get("data_args", {}))


DATA_OPTIONS = {  # the options each data set takes; the formats need --data-dir
    "mnist": {"binarise"},
    "speech": {"fw", "directory"},
    "lasa": {"directory"},
    "wav": {"fw", "directory"},
    "iamondb": {"directory", "dequantise", "split_lists"},
    "deepwriting": {"directory"},
    "mnist-idx": {"directory", "binarise"},
    "npz": {"directory"},
}
DATA_FLAGS = {
    "fw": "--fw",
    "directory": "--data-dir",
    "binarise": "--binarise",
    "dequantise": "--dequantise",
    "split_lists": "--split-lists",
}


def data_args(args: argparse.Namespace, data: str) -> dict:
    options = {dest: getattr(args, "data_dir" if dest == "directory" else dest) for dest in DATA_FLAGS}
    chosen = {k: v for k, v in options.items() if v not in (None, False)}
    wrong = sorted(set(chosen) - DATA_OPTIONS.get(data, set()))
    if wrong:
        sys.exit(f"error: {DATA_FLAGS[wrong[0]]} does not apply to --data {data}")
    if data in FORMATS and "directory" not in chosen:
        sys.exit(f"error: --data {data} reads your files: give --data-dir")
    return chosen


def load_run(run_dir: str, device: torch.device) -> tuple[dict, nn.Module, nn.Module]:
    ckpt = load_checkpoint(Path(run_dir) / "best.pt", device)
    run_config = ckpt["run_config"]
    if "net" not in run_config:
        sys.exit(f"error: {run_dir} was written by an older pyro-stcn (no 'net' in its config); train it again")
    model, guide = build(run_config, device)
    model.load_state_dict(ckpt["model"])
    guide.load_state_dict(ckpt["guide"])
    model.eval(), guide.eval()
    return run_config, model, guide


def open_run(args: argparse.Namespace) -> tuple[dict, nn.Module, nn.Module, Splits]:
    """The run in ``--run`` on ``--device``, its data, and the random state set from ``--seed``."""
    run_config, model, guide = load_run(args.run, pick_device(args.device))
    torch.manual_seed(args.seed)
    return run_config, model, guide, load_data(run_config)


def plot_count(likelihood: str, num: int) -> int:
    """How many sequences a plot shows: strokes and waveforms need room, images little."""
    return num if likelihood == "bernoulli" else min(num, 6)


def cmd_evaluate(args: argparse.Namespace) -> None:
    device = pick_device(args.device)
    run_config, model, guide = load_run(args.run, device)
    sequences = getattr(load_data(run_config), args.split)
    report = evaluate_elbo(model.model, guide, sequences, device=device, seed=args.seed)
    title = f"{run_config['model']} on {run_config['data']}, {args.split} split"
    lines = report_lines(title, report, run_config["model"])
    if args.iw is not None and (args.iw < 1 or args.chunk < 1):
        sys.exit(f"error: --iw and --chunk must be positive numbers of draws, got {args.iw} and {args.chunk}")
    if args.iw:
        with tqdm(total=len(sequences), desc=f"IWAE, K = {args.iw}", disable=args.no_progress) as bar:
            bound = evaluate_iwae(model.model, guide, sequences, args.iw, args.chunk, device=device, seed=args.seed,
                                  progress=bar.update)  # fmt: skip
        lines.insert(
            1,
            f"{title}: -IWAE bound, K = {args.iw}: {bound.per_sequence:.2f} ± {bound.stderr:.2f} nats per sequence, "
            f"{bound.per_step:.4f} nats per step (≤ the -ELBO: a tighter upper bound on -log p(x))",
        )
    if run_config["net"]["likelihood"] == "bernoulli":
        lines.append("one sequence is one image: nats per sequence are nats per image")
    print("\n".join(lines))
    if report.kl_per_sequence:
        path = Path(args.run) / f"kl-{args.split}.png"
        plot_kl_bars(report.kl_per_sequence, f"{title}: KL of each layer", path)
        print(f"wrote {path}")


def cmd_sample(args: argparse.Namespace) -> None:
    _, model, _, data = open_run(args)
    name = f"samples-prime{args.prime}" if args.prime else "samples"
    path = Path(args.out or Path(args.run) / f"{name}.png")
    generated = write_samples(model, data, path, args.num, args.steps, args.prime)
    print(f"wrote {path}: {len(generated)} sequences of {generated.shape[1]} steps")
    if data.sample_rate:  # speech: listen to it too
        for i, sequence in enumerate(generated):
            wav = path.with_name(f"{path.stem}-{i}.wav")
            write_wav(wav, sequence.flatten(), data.sample_rate)
        print(f"wrote {len(generated)} wav files at {data.sample_rate} Hz: {path.with_name(path.stem)}-*.wav")


def cmd_reconstruct(args: argparse.Namespace) -> None:
    """Test sequences beside one-step-ahead reconstructions: x̂_t ~ p(x_t | x_{<t}, z_t)
    with z ~ q(z | x) (paper 1, Figure 4); for images the mean of 16 such draws."""
    run_config, model, guide, data = open_run(args)
    likelihood = run_config["net"]["likelihood"]
    device = next(model.parameters()).device
    x, mask = (t.to(device) for t in pad_batch(data.test[: plot_count(likelihood, args.num)]))
    draws = one_step_ahead(model.model, guide, x, mask, 16 if likelihood == "bernoulli" else 1)
    shown = int(mask.sum(1).min())
    panels = {"real test": x[:, :shown].cpu(), "reconstruction": draws.mean(0)[:, :shown].cpu()}
    path = Path(args.out or Path(args.run) / "reconstructions.png")
    plot_sequences(panels, likelihood, path)
    print(f"wrote {path}")


def cmd_ppc(args: argparse.Namespace) -> None:
    run_config, model, guide, data = open_run(args)
    device = next(model.parameters()).device
    likelihood = run_config["net"]["likelihood"]
    framed = data.sample_rate is not None  # speech: statistics of the waveform, frames end to end
    rows = posterior_predictive_check(model, guide, data.test[: args.num], likelihood, args.replicates, framed, device)
    kinds = list(rows[0].p_value)
    lines = [
        f"posterior predictive checks of {run_config['model']} on {min(args.num, len(data.test))} test sequences "
        f"of {run_config['data']}, {args.replicates} replicates each; p = P(T(replicate) >= T(real))",
        "| statistic | real | " + " | ".join(f"{k} (mean ± sd) | p" for k in kinds) + " |",
        "|---|---|" + "---|---|" * len(kinds),
    ]
    for row in rows:
        cells = [
            f"{row.replicated[k].mean():.4g} ± {row.replicated[k].std():.2g} | {row.p_value[k]:.2f}" for k in kinds
        ]
        lines.append(f"| {row.statistic} | {row.real:.4g} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    out = Path(args.run)
    (out / "ppc.md").write_text("\n".join(lines) + "\n")
    plot_ppc(rows, out / "ppc.png")
    print(f"wrote {out / 'ppc.md'} and {out / 'ppc.png'}")


def cmd_bench(args: argparse.Namespace) -> None:
    """Cached vs uncached generation at paper 1's handwriting size (receptive field 316)."""
    device = pick_device(args.device)
    paper = PRESETS["iamondb-stcn-dense"]
    config = STCNConfig(
        x_dim=3, likelihood=paper["likelihood"], components=paper["components"], channels=paper["channels"][0],
        blocks=paper["blocks"], z_dims=paper["z_dims"], hidden=paper["hidden"], output_layers=paper["output_layers"],
    )  # fmt: skip
    torch.manual_seed(0)
    model = make_model("stcn-dense", config).to(device).eval()  # untrained: the weights do not change the cost
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


COMPARED = ["wavenet", "wavenet-dense", "rnn", "vrnn", "stcn", "stcn-dense"]  # paper 1's Table 1 rows
PRINTED = {"wavenet": "Wavenet", "wavenet-dense": "Wavenet-dense", "rnn": "RNN", "vrnn": "VRNN", "stcn": "STCN"}
PRINTED |= {"stcn-dense": "STCN-dense", "ms-stcn": "MS-STCN"}
COLUMNS = {"bernoulli": "Bernoulli", "gaussian": "Gaussian", "gmm": "GMM", "handwriting": "pen Bernoulli × GMM"}


def without_budget(run_config: dict) -> dict:
    """A run's config less its time budget: a rerun with a larger budget trains on."""
    return {**run_config, "train": {k: v for k, v in run_config["train"].items() if k != "budget"}}


def cmd_compare(args: argparse.Namespace) -> None:
    """Every model of ``--models`` with every likelihood of ``--likelihoods``, each set up
    as ``run.py train`` would with the same preset, data and seed, trained for the same
    time budget and scored on the same test split (``pyro_stcn.compare``)."""
    if not math.isfinite(args.budget) or args.budget <= 0 or args.iw < 1:
        sys.exit(f"error: --budget and --iw must be positive, got {args.budget} minutes and {args.iw} draws")
    device = pick_device(args.device)
    data_name = args.data or (PRESETS[args.preset]["data"] if args.preset else RUN_DEFAULTS["data"])
    out = Path(args.out or f"runs/compare-{args.preset or data_name}")
    if args.preset:
        flags = as_flags(PRESETS[args.preset])
        print(f"preset {args.preset} = {flags}, less what each model does not take; the time budget replaces --steps")
    contenders, data = [], None
    for likelihood in args.likelihoods or [None]:
        for model in args.models or COMPARED:
            flags = ["train", "--model", model, "--seed", str(args.seed)]
            given_flags = ("preset", args.preset), ("data", args.data), ("data-dir", args.data_dir), ("fw", args.fw)
            flags += [f"--{k}={v}" for k, v in given_flags if v]
            flags += ["--likelihood", likelihood] if likelihood else []
            run_config, data = new_run_config(parser().parse_args(flags), quiet=True, data=data)  # one load for all
            run_config["train"].update(steps=10**9, budget=60 * args.budget)  # the time budget ends training
            run_dir = out / f"{model}-{run_config['net']['likelihood']}"
            saved = run_dir / "config.json"
            if saved.exists() and without_budget(json.loads(saved.read_text())) != without_budget(run_config):
                sys.exit(f"error: {run_dir} holds a run with other settings; give another --out or remove it")
            run_dir.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(run_config, indent=2))
            pyro.set_rng_seed(args.seed)  # the seed sets the initial weights too
            network, guide = build(run_config, device)
            contenders.append(
                Contender(
                    model,
                    COLUMNS[run_config["net"]["likelihood"]],
                    network,
                    guide,
                    make_objective(run_config["objective"]),
                    TrainConfig(**run_config["train"]),
                    run_dir,
                    schedules_for(run_config),
                    run_config,
                )  # fmt: skip
            )
    print(f"comparing {len(contenders)} models on {data_name}, {args.budget:g} minutes each, on {device}; in {out}")
    scores = compare(contenders, data, 60 * args.budget, args.iw, device, progress=not args.no_progress)
    title = f"{data_name}" + (f", preset {args.preset}" if args.preset else "")
    threads = torch.get_num_threads()
    title += f", {args.budget:g} minutes of training per model on {device} ({threads} thread{'s' * (threads > 1)})"
    print(write_comparison(scores, out, title, args.iw, PRINTED))
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model by SVI")
    t.add_argument(
        "--data", choices=[*DATASETS, *FORMATS], help="a built-in data set (default digits) or a format of your files"
    )
    t.add_argument("--fw", type=int, help="speech, wav: frame width, samples per step (default 200)")
    t.add_argument("--data-dir", help="where your files are (a directory; for npz, the file)")
    t.add_argument(
        "--binarise", choices=["static", "dynamic"], help="mnist, mnist-idx: training pixels (default static)"
    )
    t.add_argument("--dequantise", action="store_true", help="iamondb: uniform noise of width 1 on training offsets")
    t.add_argument(
        "--split-lists", metavar="DIR", help="iamondb: trainset.txt, testset_v.txt, testset_f.txt (default 80/10/10)"
    )
    t.add_argument("--preset", choices=list(PRESETS), help="a paper experiment (pyro_stcn/presets/); flags override it")
    t.add_argument("--model", choices=list(MODELS), help="default stcn-dense")
    t.add_argument("--guide", choices=list(GUIDES), help="default: ladder; vrnn for the VRNN; none without latents")
    t.add_argument("--prior", choices=list(PRIORS), help="default dynamic")
    t.add_argument("--likelihood", choices=list(LIKELIHOODS), help="default: the one the data call for")
    t.add_argument("--components", type=int, help="gmm, handwriting: mixture components (STCN default 20)")
    t.add_argument("--objective", choices=list(OBJECTIVES), help="default elbo")
    t.add_argument("--beta-rate", type=float, help="annealed: β rises by this per step (default 1e-4)")
    t.add_argument("--lam", type=float, help="free bits: λ0 in nats per latent unit (default 0.5)")
    t.add_argument("--lam-half-life", type=float, help="free bits: steps to halve λ (default 300000)")
    t.add_argument("--steps", type=int, help="training steps (with --resume: the new total)")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--lr-decay", type=float, help="the learning rate is multiplied by this every 1000 steps")
    t.add_argument("--seed", type=int)
    t.add_argument("--valid-every", type=int)
    t.add_argument("--valid-sequences", type=int, help="validate on the first N validation sequences only")
    t.add_argument("--crop", type=int, help="train on random windows of this many steps (long sequences)")
    t.add_argument("--channels", type=int_list, help="filters per layer (STCN: one width), e.g. 64 or 96,128,192")
    t.add_argument("--blocks", type=int, help="Wavenet blocks per layer (STCN: dilations 1..2^(K-1))")
    t.add_argument("--layers", type=int, help="Wavenet: feature levels L (default 4; from an STCN preset: its layers)")
    t.add_argument("--hidden", type=int, help="width of the prior, posterior and output nets; RNN, VRNN: and the LSTM")
    t.add_argument("--output-layers", type=int, help="STCN: 1x1 conv + ReLU layers of the output net (default 2)")
    t.add_argument(
        "--z-dims", type=int_list, help="latent sizes bottom to top, e.g. 16,8,8,4 (MS-STCN: or one for all; VRNN: one)"
    )
    t.add_argument("--layout", choices=list(MS_STCN_LAYOUTS), help="MS-STCN: a network layout of paper 2, app. A.1")
    t.add_argument("--strides", type=int_list, help="MS-STCN: stride of each layer, e.g. 1,2,2,2,1")
    t.add_argument("--deterministic", action="store_true", help="MS-STCN: no latent variables (paper 2's control)")
    t.add_argument("--out", help="run directory (default runs/MODEL-GUIDE-TIME)")
    t.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="-ELBO, per-layer KL and the IWAE bound of a trained run")
    e.add_argument("--run", required=True)
    e.add_argument("--split", default="test", choices=["train", "valid", "test"])
    e.add_argument("--iw", type=int, metavar="K", help="also the importance-weighted bound with K samples")
    e.add_argument("--chunk", type=int, default=10, help="--iw: draws per pass (memory grows with it, not with K)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("sample", help="generate sequences from a trained run: a PNG (and wav files for speech)")
    s.add_argument("--run", required=True)
    s.add_argument("--num", type=int, default=32, help="sequences (at most 6 for strokes and waveforms)")
    s.add_argument("--steps", type=int, help="steps to generate (default: the test sequences' length)")
    s.add_argument("--prime", type=int, default=0, metavar="K", help="continue the first K steps of test sequences")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", help="PNG path (default RUN/samples.png)")
    s.set_defaults(func=cmd_sample)

    r = sub.add_parser("reconstruct", help="test sequences beside their reconstructions from the posterior")
    r.add_argument("--run", required=True)
    r.add_argument("--num", type=int, default=16)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", help="PNG path (default RUN/reconstructions.png)")
    r.set_defaults(func=cmd_reconstruct)

    c = sub.add_parser("ppc", help="posterior predictive checks: statistics of real vs replicated test data")
    c.add_argument("--run", required=True)
    c.add_argument("--num", type=int, default=64, help="test sequences")
    c.add_argument("--replicates", type=int, default=20)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_ppc)

    b = sub.add_parser("bench", help="benchmark: cached vs uncached generation at paper 1's handwriting size")
    b.add_argument("--steps", type=int_list, default=[1000, 4000], help="sequence lengths (default 1000,4000)")
    b.add_argument("--num", type=int, default=1, help="sequences generated at once")
    b.set_defaults(func=cmd_bench)

    m = sub.add_parser("compare", help="train several models for the same time budget and tabulate their test scores")
    m.add_argument("--preset", choices=list(PRESETS), help="a paper experiment; each model takes what applies to it")
    m.add_argument("--data", choices=[*DATASETS, *FORMATS], help="data set or format (default: preset's, or digits)")
    m.add_argument("--data-dir", help="where your files are, for the formats and the paper presets")
    m.add_argument("--fw", type=int, help="speech, wav: frame width, samples per step (default 200)")
    m.add_argument("--models", type=name_list(MODELS, "model"), help=f"comma-separated (default {','.join(COMPARED)})")
    m.add_argument("--likelihoods", type=name_list(LIKELIHOODS, "likelihood"), help="comma-separated columns")
    m.add_argument("--budget", type=float, required=True, metavar="MINUTES",
                   help="training time per model, validations included; rerun with more to train on")  # fmt: skip
    m.add_argument("--iw", type=int, default=100, metavar="K", help="IWAE draws for latent-variable models")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", help="directory (default runs/compare-PRESET or runs/compare-DATA)")
    m.add_argument("--no-progress", action="store_true", help="no progress bars")
    m.set_defaults(func=cmd_compare)

    for sp in (t, e, s, r, c, b, m):
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
