"""Runs as a library: a run's config from settings, its model, guide and data, training
it into a run directory, and loading and scoring a trained one.

A run config is the dict a run directory keeps as ``config.json``::

    {"data": "digits", "data_args": {}, "model": "stcn-dense", "guide": "ladder",
     "objective": "linear-free-bits", "kl_gradient": "control-variate", "beta_rate": ..., "lam": ...,
     "lam_half_life": ..., "test_iw": 100,
     "net": {... the model's config ...}, "train": {... TrainConfig ...}}

Settings are the command line's options by their argparse names (``z_dims`` for
``--z-dims``), given or None; :func:`new_run_config` turns them into a run config the
way ``run.py train`` does: flags first, then the preset, then the defaults. Every
function here raises ``ValueError`` (or ``FileNotFoundError``) with a message that
names the setting, file or field at fault; only the command line turns them into exit
messages. What a model is (its config, sizes, flags and guides) comes from the
registry (:mod:`pyro_stcn.runs.registry`)::

    from pyro_stcn.runs.api import load_run, score

    run = load_run("runs/default")                 # config, model, guide, data
    print(score(run, "test", iw=100).neg_iwae)     # -IWAE bound on the test split, per step
    print(score(run, "test", iw=100, iw_over="sequence").neg_iwae)   # K draws of whole sequences
"""

import dataclasses
from collections.abc import Sequence
import json
import math
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import Tensor, nn

from pyro_stcn.training import distributed
from pyro_stcn.training.checkpoint import load_checkpoint
from pyro_stcn.evaluation.compare import Contender
from pyro_stcn.data import DATASETS, FORMATS, OPTIONS, Splits, pad_batch
from pyro_stcn.inference import OBJECTIVES, make_objective
from pyro_stcn.inference.objectives import LayerwiseELBO
from pyro_stcn.evaluation.bounds import BoundReport, ElboReport, evaluate_elbo, evaluate_iwae
from pyro_stcn.inference.factors import factor_label, factor_steps_of
from pyro_stcn.nets.likelihoods import PRINTED as PRINTED_LIKELIHOODS
from pyro_stcn.nets.likelihoods import SUITABLE
from pyro_stcn.nets.normalise import Standardisation
from pyro_stcn.evaluation.plots import plot_sequences
from pyro_stcn.runs.presets import apply_preset
from pyro_stcn.runs.registry import NETWORK_FLAGS, default_guide, family_of, make_guide, make_model
from pyro_stcn.inference.schedules import halving, linear_warmup
from pyro_stcn.training import Callback, CSVLog, ProgressBar, TrainConfig, TrainResult, train

RUN_DEFAULTS = {
    "data": "digits",
    "model": "stcn-dense",
    # Linear free bits at λ0 = 0.02 nats per latent dimension, halved every 500 steps: on the
    # digits it keeps every layer in use (3.7-4.2 nats per image) and bounds -log p(x) better
    # than the plain ELBO, whose latents collapse (README, "Keeping the latents in use").
    # Paper 2's λ0 = 0.5 halved every 300k steps is its preset's (blizzard-ms-stcn-fw200).
    "objective": "linear-free-bits",
    "beta_rate": 1e-4,
    "lam": 0.02,
    "lam_half_life": 500,
    "test_iw": 100,  # the training report's importance-weighted bound: K draws of each factor (0: none)
}
IW_SAMPLES = 5  # --objective iwae: draws of each step's latents
# Sized for the default run: digits on 2 CPU cores in under 5 minutes.
DEFAULT_TRAIN = TrainConfig(steps=1500, batch_size=32, lr=2e-3, lr_decay=0.8, valid_every=100)
TRAIN_SETTINGS = ["steps", "batch_size", "lr", "lr_decay", "seed", "valid_every", "valid_sequences", "crop", "budget",
                  "bf16"]  # fmt: skip
DATA_SETTINGS = {"fw": "fw", "directory": "data_dir", "binarise": "binarise", "dequantise": "dequantise"}
DATA_SETTINGS |= {"split_lists": "split_lists"}  # a loader's option -> the setting that gives it


def flag(setting: str) -> str:
    """The command-line flag of a setting: ``z_dims`` -> ``--z-dims``."""
    return "--" + setting.replace("_", "-")


def given(settings: dict, names) -> dict:
    """The settings among ``names`` that were given (a zero counts, None and False do not)."""
    return {n: settings[n] for n in names if settings.get(n) is not None and settings.get(n) is not False}


def new_run_config(settings: dict, data: Splits | None = None) -> tuple[dict, Splits]:
    """A new run's config from ``settings``, then the preset they name, then the
    defaults; and the run's data (loaded unless given)."""
    if settings.get("preset"):
        settings, _ = apply_preset(settings, settings["preset"])
    run_config = {**RUN_DEFAULTS, **given(settings, [*RUN_DEFAULTS, "preset"])}
    run_config["guide"] = settings.get("guide") or default_guide(run_config["model"])
    run_config["data_args"] = data_args(settings, run_config["data"])
    train_config = dataclasses.replace(DEFAULT_TRAIN, **given(settings, TRAIN_SETTINGS))
    check_train_config(train_config)  # before the data load: the cheap checks first
    data = load_data(run_config) if data is None else data
    run_config["net"] = dataclasses.asdict(net_config(settings, run_config["model"], data, run_config["data"]))
    run_config["train"] = dataclasses.asdict(train_config)
    run_config["kl_gradient"] = kl_gradient(run_config["objective"], settings.get("kl_gradient"))
    if not isinstance(run_config["test_iw"], int) or run_config["test_iw"] < 0:
        raise ValueError(f"--test-iw: expected a number of draws, 0 or more, got {run_config['test_iw']}")
    iw_samples = settings.get("iw_samples")
    if run_config["objective"] == "iwae":
        run_config["iw_samples"] = IW_SAMPLES if iw_samples is None else iw_samples
        check_objective(run_config, data)
    elif iw_samples is not None:
        raise ValueError(f"--iw-samples applies to --objective iwae, not {run_config['objective']}")
    return run_config, data


def kl_gradient(objective: str, given: str | None) -> str:
    """The gradient estimator for ``objective``: ``given`` if the objective takes it,
    else its default (stl; dreg for iwae)."""
    takes = OBJECTIVES[objective].kl_gradients
    if given is None:
        return takes[0]
    if given not in takes:
        raise ValueError(f"--kl-gradient {given} does not apply to --objective {objective}, which takes "
                         f"{' or '.join(takes)} (default {takes[0]})")  # fmt: skip
    return given


def data_args(settings: dict, data: str) -> dict:
    """The loader options of data set ``data`` from the settings."""
    if data not in DATASETS and data not in FORMATS:
        raise ValueError(f"unknown data {data!r}; valid: {', '.join([*DATASETS, *FORMATS])}")
    present = given(settings, DATA_SETTINGS.values())  # a zero counts: 0 is not None
    chosen = {option: present[name] for option, name in DATA_SETTINGS.items() if name in present}
    wrong = sorted(set(chosen) - OPTIONS.get(data, set()))
    if wrong:
        raise ValueError(f"{flag(DATA_SETTINGS[wrong[0]])} does not apply to --data {data}")
    if data in FORMATS and "directory" not in chosen:
        raise ValueError(f"--data {data} reads your files: give --data-dir")
    return chosen


def load_data(run_config: dict) -> Splits:
    """The run's data set, with its options (``--fw``, ``--data-dir``)."""
    return {**DATASETS, **FORMATS}[run_config["data"]](**run_config.get("data_args", {}))


def net_config(settings: dict, model: str, data: Splits, data_name: str = "") -> Any:
    """The model's config from the network settings given, its family's defaults and
    the data: x_dim and the input standardisation always come from the training split,
    the likelihood from the data unless ``likelihood`` picks another that suits it."""
    family = family_of(model)
    likelihood = settings.get("likelihood") or data.likelihood
    if likelihood not in SUITABLE[data.likelihood]:
        raise ValueError(
            f"--likelihood {likelihood} does not suit --data {data_name or 'this data'}, whose values call for "
            f"{' or '.join(SUITABLE[data.likelihood])}"
        )
    sizes = given(settings, NETWORK_FLAGS)
    wrong = [s for s in sizes if s not in family.flags]
    if wrong:
        takes = ", ".join(flag(f) for f in sorted(family.flags))
        raise ValueError(f"{flag(wrong[0])} does not apply to --model {model}, which takes {takes}")
    for name, values in sizes.items():
        if isinstance(values, list) and not family.per_layer >= {name}:
            if len(values) > 1:
                raise ValueError(f"--model {model} takes one value for {flag(name)}, got {len(values)}")
            sizes[name] = values[0]
        if isinstance(values, (int, list)) and not isinstance(values, bool):
            if min(values if isinstance(values, list) else [values]) < 1:
                raise ValueError(f"{flag(name)} must be positive, got {values}")
    units = Standardisation.fit(data.train, likelihood)  # training split only
    from_data = {"x_dim": data.x_dim, "likelihood": likelihood, "shift": units.shift, "scale": units.scale}
    return family.configure(model, sizes, from_data)


def check_train_config(config: TrainConfig) -> None:
    """Refuse training settings that cannot mean anything, naming the flag."""
    for name in ("steps", "batch_size", "valid_every", "valid_sequences", "crop"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ValueError(f"{flag(name)}: {name} must be positive, got {value}")
    if not 0 < config.lr < math.inf:
        raise ValueError(f"--lr: the learning rate must be a positive number, got {config.lr:g}")
    if not 0 < config.lr_decay <= 1:
        raise ValueError(f"--lr-decay: the learning rate's factor every {config.lr_decay_steps} steps must be in "
                         f"(0, 1], got {config.lr_decay:g}")  # fmt: skip
    if config.budget is not None and not 0 < config.budget < math.inf:
        raise ValueError(f"--budget: expected a positive number of minutes, got {config.budget / 60:g}")


def build(run_config: dict, device: torch.device | str = "cpu") -> tuple[nn.Module, nn.Module]:
    """Model and guide from a run config, with fresh weights drawn from the current seed."""
    pyro.clear_param_store()
    family = family_of(run_config["model"])
    config = family.config(**run_config["net"])
    model = make_model(run_config["model"], config).to(device)
    guide = make_guide(run_config["guide"], model).to(device)
    return model, guide


def objective_for(run_config: dict) -> LayerwiseELBO:
    """The run's objective, its β and λ to be set each step by :func:`schedules_for`.
    Runs saved before ``kl_gradient`` existed trained with the pathwise gradient, and
    resume with it."""
    options = {"kl_gradient": run_config.get("kl_gradient", "pathwise")}
    if run_config["objective"] == "iwae":
        options["samples"] = run_config.get("iw_samples", IW_SAMPLES)
    return make_objective(run_config["objective"], **options)


def check_objective(run_config: dict, data: Splits) -> None:
    """Refuse at once, with the objective's reason, an objective the model cannot train
    on (the importance-weighted one for latents that do not factorise, or a model that
    draws one particle at a time): one evaluation on two training sequences, with the
    random state left as it was."""
    with torch.random.fork_rng():
        model, guide = build(run_config)
        x, mask = pad_batch(data.train[:2])
        try:
            objective_for(run_config).differentiable_loss(model.model, guide, x, mask)
        except ValueError as e:
            raise ValueError(f"--objective {run_config['objective']} does not fit --model {run_config['model']}: "
                             f"{e}") from None  # fmt: skip
    pyro.clear_param_store()


def schedules_for(run_config: dict) -> dict:
    """β warm-up for ``annealed``, halving λ for the free-bits objectives."""
    objective = run_config["objective"]
    if objective == "annealed":
        return {"beta": partial(linear_warmup, rate=run_config["beta_rate"])}
    if objective in ("free-bits", "linear-free-bits"):
        return {"lam": partial(halving, start=run_config["lam"], half_life=run_config["lam_half_life"])}
    return {}


def start_run(run_config: dict, run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, ...]:
    """Model and guide of a new run, their weights from the run's seed, and its
    ``config.json`` written; refuses a directory that holds another run."""
    run_dir = Path(run_dir)
    if (run_dir / "last.pt").exists():
        raise ValueError(f"{run_dir} already holds a run; continue it with --resume {run_dir}")
    pyro.set_rng_seed(run_config["train"]["seed"])  # the seed sets the initial weights too
    model, guide = build(run_config, device)
    if distributed.is_main():  # under torchrun, rank 0 alone writes
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(run_config, indent=2))
    return model, guide


def resume_run(run_dir: str | Path, steps: int | None = None, device: torch.device | str = "cpu") -> tuple:
    """The config, model and guide of the run in ``run_dir`` to train on (its weights
    come from ``last.pt`` when training starts); ``steps`` sets a new total."""
    config_path = Path(run_dir) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no config.json there, so it is not a run directory")
    try:
        run_config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_path} is not valid JSON ({e}); it cannot be resumed") from None
    if not isinstance(run_config, dict) or not isinstance(run_config.get("train"), dict) or "net" not in run_config:
        raise ValueError(f"{config_path} has no 'train' and 'net' settings; expected the config.json of a run")
    if steps is not None:  # train a finished run for longer
        last = Path(run_dir) / "last.pt"
        done = load_checkpoint(last)["train_state"]["step"] if last.is_file() else 0
        if steps < max(done, 1):
            raise ValueError(f"--steps {steps}: {run_dir} has trained {done} steps; give a larger total to train on")
        run_config["train"]["steps"] = steps
        if distributed.is_main():  # atomically: the other ranks may be reading it
            config_path.with_name("config.json.tmp").write_text(json.dumps(run_config, indent=2))
            config_path.with_name("config.json.tmp").replace(config_path)
    pyro.set_rng_seed(run_config["train"]["seed"])
    return (run_config, *build(run_config, device))


def train_run(
    run_config: dict,
    model: nn.Module,
    guide: nn.Module,
    data: Splits,
    run_dir: str | Path,
    device: torch.device | str = "cpu",
    callbacks: Sequence[Callback] | None = None,
) -> TrainResult:
    """Train a run's model and guide (:func:`start_run` or :func:`resume_run`) in
    ``run_dir``; it resumes from ``last.pt`` if there is one, and leaves the best
    validation weights in the modules. The run keeps its ``log.csv``
    (:class:`~pyro_stcn.training.CSVLog`), and ``callbacks`` are told each step
    besides (by default a progress bar; :mod:`pyro_stcn.training.callbacks`)."""
    callbacks = [ProgressBar()] if callbacks is None else list(callbacks)
    return train(
        model.model, guide, {"model": model, "guide": guide}, objective_for(run_config), data,
        TrainConfig(**run_config["train"]), run_dir, schedules=schedules_for(run_config), device=device,
        run_config=run_config, callbacks=[CSVLog(), *callbacks],
    )  # fmt: skip


@dataclass
class Run:
    """A trained run: its directory, config, and model and guide in eval mode."""

    directory: Path
    config: dict
    model: nn.Module
    guide: nn.Module

    @cached_property
    def data(self) -> Splits:
        """The run's data set, loaded on first use."""
        return load_data(self.config)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_run(run_dir: str | Path, device: torch.device | str = "cpu", checkpoint: str = "best.pt") -> Run:
    """The run in ``run_dir`` with the weights of its best validation (or ``checkpoint``)."""
    ckpt = load_checkpoint(Path(run_dir) / checkpoint, device)
    run_config = ckpt["run_config"]
    if "net" not in run_config:
        raise ValueError(f"{run_dir} was written by an older pyro-stcn (no 'net' in its config); train it again")
    model, guide = build(run_config, device)
    model.load_state_dict(ckpt["model"])
    guide.load_state_dict(ckpt["guide"])
    model.eval(), guide.eval()
    return Run(Path(run_dir), run_config, model, guide)


@dataclass
class Scores:
    """A run's figures on one split: the -ELBO (exact -log p(x) without latents) and,
    if asked for, the -IWAE bound, importance-weighted ``iwae_over`` ("per step", "per
    block of 8 steps" or "per sequence")."""

    neg_elbo: ElboReport
    neg_iwae: BoundReport | None = None
    iwae_over: str | None = None


IW_OVER = ("auto", "factors", "sequence")


def bound_factor_steps(model: nn.Module, iw_over: str) -> int | None:
    """The ``factor_steps`` of the IWAE bound: the model's own (``"factors"``; refused
    where its latents do not factorise), None for whole sequences (``"sequence"``), or
    the model's own where it has them, else None (``"auto"``)."""
    if iw_over not in IW_OVER:
        raise ValueError(f"unknown --iw-over {iw_over!r}; valid: {', '.join(IW_OVER)}")
    steps = factor_steps_of(model) if iw_over != "sequence" else None
    if iw_over == "factors" and steps is None:
        raise ValueError(
            f"--iw-over factors: the latents of a {type(model).__name__} do not factorise over time given x (its "
            "factor_steps is None), so only the sequence-level bound is valid; use --iw-over sequence"
        )
    return steps


def score(run: Run, split: str = "test", iw: int | None = None, chunk: int = 10, seed: int = 0,
          progress=None, iw_over: str = "auto") -> Scores:  # fmt: skip
    """-ELBO and the KL of each layer on ``split``, and with ``iw`` K the -IWAE bound
    from K draws (``chunk`` at a time) of each factor the model's latents split into
    (``iw_over="auto"``: per step for STCN, per sequence for the VRNN; ``"factors"``
    insists on it, ``"sequence"`` draws whole sequences); ``progress`` is called with
    sequences done."""
    if split not in ("train", "valid", "test"):
        raise ValueError(f"unknown split {split!r}; valid: train, valid, test")
    if iw is not None and (iw < 1 or chunk < 1):
        raise ValueError(f"--iw and --chunk must be positive numbers of draws, got {iw} and {chunk}")
    factor_steps = bound_factor_steps(run.model, iw_over)
    sequences = getattr(run.data, split)
    neg_elbo = evaluate_elbo(run.model.model, run.guide, sequences, device=run.device, seed=seed)
    if not iw:
        return Scores(neg_elbo)
    bound = evaluate_iwae(run.model.model, run.guide, sequences, iw, chunk, device=run.device, seed=seed,
                          progress=progress, factor_steps=factor_steps)  # fmt: skip
    return Scores(neg_elbo, bound, factor_label(factor_steps))


def plot_count(data: Splits, num: int) -> int:
    """How many sequences a plot shows: strokes and waveforms need room, images little."""
    return num if data.kind == "image" else min(num, 6)


MAX_SAMPLE_VALUES = 10**8  # what `sample` may generate at once (400 MB of float32)


def write_samples(model: nn.Module, data: Splits, path: Path, num: int, steps: int | None = None,
                  prime: int = 0) -> Tensor:  # fmt: skip
    """Sequences generated by the cached sampler beside real test ones, drawn as the
    data's kind; with ``prime`` K, the generated ones continue the first K steps of
    those test sequences. Returns the generated ``[num, steps, x_dim]``. Sizes are
    checked before anything is allocated: at most :data:`MAX_SAMPLE_VALUES` values."""
    if num < 1:
        raise ValueError(f"--num {num}: expected at least 1 sequence")
    if steps is not None and steps < 1:
        raise ValueError(f"--steps {steps}: expected at least 1 step to generate")
    if prime < 0:
        raise ValueError(f"--prime {prime}: expected a number of given steps, 0 or more")
    steps = len(data.test[0]) if steps is None else steps
    values = plot_count(data, num) * steps * data.x_dim
    if values > MAX_SAMPLE_VALUES:
        raise ValueError(f"--num {num} --steps {steps}: {plot_count(data, num)} sequences × {steps} steps × "
                         f"{data.x_dim} values = {values:,} values to generate; expected at most "
                         f"{MAX_SAMPLE_VALUES:,}, so give fewer --steps or --num")  # fmt: skip
    if prime >= steps:
        raise ValueError(f"--prime {prime} leaves nothing to generate in {steps} steps; give more --steps")
    long_enough = [s for s in data.test if len(s) >= max(prime, 1)]
    if not long_enough:
        raise ValueError(f"--prime {prime}: no test sequence has that many steps (longest {max(map(len, data.test))})")
    real = long_enough[: plot_count(data, num)]
    device = next(model.parameters()).device
    given = torch.stack([s[:prime] for s in real]).to(device) if prime else None
    generated = model.generate(len(real), steps, prime=given)
    shown = min(steps, min(len(s) for s in real))
    title = f"first {prime} steps given, then generated" if prime else "generated"
    panels = {title: generated.cpu(), "real test": torch.stack([s[:shown] for s in real])}
    if data.kind == "image" and shown != steps:  # images: both panels whole images
        panels = {title: generated.cpu()}
    plot_sequences(panels, data.kind, path, primed=prime)
    return generated


def without_budget(run_config: dict) -> dict:
    """A run's config less its time budget: a rerun with a larger budget trains on."""
    return {**run_config, "train": {k: v for k, v in run_config["train"].items() if k != "budget"}}


def contender(settings: dict, model: str, out: Path, data: Splits | None, device: torch.device,
              budget: float) -> tuple[Contender, Splits]:  # fmt: skip
    """One cell of the comparison, set up as ``train`` would with the same settings."""
    run_config, data = new_run_config({**settings, "model": model}, data=data)
    run_config["train"].update(steps=10**9, budget=budget)  # the time budget ends training
    run_dir = out / f"{model}-{run_config['net']['likelihood']}"
    saved = run_dir / "config.json"
    if saved.exists() and without_budget(json.loads(saved.read_text())) != without_budget(run_config):
        raise ValueError(f"{run_dir} holds a run with other settings; give another --out or remove it")
    run_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(run_config, indent=2))
    pyro.set_rng_seed(run_config["train"]["seed"])  # the seed sets the initial weights too
    network, guide = build(run_config, device)
    column = PRINTED_LIKELIHOODS[run_config["net"]["likelihood"]]
    return Contender(model, column, network, guide, objective_for(run_config),
                     TrainConfig(**run_config["train"]), run_dir, schedules_for(run_config),
                     run_config), data  # fmt: skip
