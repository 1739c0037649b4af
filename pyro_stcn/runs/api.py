"""Runs as a library: training a run into its directory, and loading and scoring a
trained one; each function raises ``ValueError`` (or ``FileNotFoundError``) with a
message that names the setting, file or field at fault. A run's config:
:mod:`pyro_stcn.runs.config`::

    from pyro_stcn.runs import load_run, score

    run = load_run("runs/default")                 # config, model, guide, data
    print(score(run, "test", iw=100).neg_iwae)     # -IWAE bound on the test split, per step
    print(score(run, "test", iw=100, iw_over="sequence").neg_iwae)   # K draws of whole sequences
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pyro
import torch
from torch import Tensor, nn

from pyro_stcn.data import Splits
from pyro_stcn.errors import SettingError
from pyro_stcn.evaluation import bounds
from pyro_stcn.evaluation.compare import Contender
from pyro_stcn.evaluation.plots import plot_sequences
from pyro_stcn.inference.factors import factor_steps_of
from pyro_stcn.nets.likelihoods import PRINTED as PRINTED_LIKELIHOODS
from pyro_stcn.runs.config import RunConfig, build, load_data, new_run_config, objective_for, schedules_for
from pyro_stcn.training import Callback, CSVLog, ProgressBar, TrainResult, distributed, train
from pyro_stcn.training.callbacks import log_header
from pyro_stcn.training.checkpoint import load_checkpoint, replace_atomically


def start_run(run_config: RunConfig, run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, ...]:
    """Model and guide of a new run, their weights from the run's seed, and its
    ``config.json`` written; refuses a directory that holds another run."""
    run_dir = Path(run_dir)
    if (run_dir / "last.pt").exists():
        raise SettingError(f"{run_dir} already holds a run; continue it with <resume> {run_dir}")
    pyro.set_rng_seed(run_config.train.seed)  # the seed sets the initial weights too
    model, guide = build(run_config, device)
    if distributed.is_main():  # under torchrun, rank 0 alone writes
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(run_config.to_dict(), indent=2))
    return model, guide


def resume_run(run_dir: str | Path, steps: int | None = None, device: torch.device | str = "cpu") -> tuple:
    """The config, model and guide of the run in ``run_dir`` to train on (its weights
    come from ``last.pt`` when training starts); ``steps`` sets a new total.

    The run's files are checked before any is trusted or written: ``config.json`` must
    agree with ``last.pt`` on the network whose weights it holds and the learning rate
    (:func:`check_against_checkpoint`; for every other setting ``config.json`` wins),
    and ``log.csv`` must be a pyro-stcn log
    (:func:`~pyro_stcn.training.callbacks.log_header`)."""
    run_dir = Path(run_dir)
    config_path, last = run_dir / "config.json", run_dir / "last.pt"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no config.json there, so it is not a run directory")
    try:
        saved = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_path} is not valid JSON ({e}); it cannot be resumed") from None
    run_config = RunConfig.from_dict(saved, str(config_path))
    done = 0
    if last.is_file():
        ckpt = load_checkpoint(last)
        check_against_checkpoint(run_config, ckpt, config_path, last)
        done = ckpt["train_state"]["step"]
    log_header(run_dir / "log.csv")
    if steps is not None:  # train a finished run for longer
        if steps < max(done, 1):
            raise SettingError(f"<steps> {steps}: {run_dir} has trained {done} steps; give a larger total to train on")
        run_config.train.steps = steps
        if distributed.is_main():  # atomically: the other ranks may be reading it
            text = json.dumps(run_config.to_dict(), indent=2)
            replace_atomically(config_path, lambda f: f.write(text.encode()))
    pyro.set_rng_seed(run_config.train.seed)
    return (run_config, *build(run_config, device))


# What a checkpoint holds besides a config: the weights of a network, and the optimizer's state, whose rates
# (the base of the learning-rate schedule) a resumed run takes from it.
HELD = {"model": "weights", "guide": "weights", "net": "weights", "train.lr": "optimizer's state"}


def check_against_checkpoint(run_config: RunConfig, ckpt: dict, config_path: Path, checkpoint: Path) -> None:
    """Refuse a ``config.json`` that disagrees with the checkpoint on what the checkpoint
    holds (:data:`HELD`: the network, model, guide and ``net``, whose weights would not
    fit or would mean something else; the learning rate, which its optimizer state
    fixes), in one line that names each difference. For every other setting
    ``config.json`` wins, and a difference is printed (except a new ``steps`` total: that
    is how a run is trained for longer)."""
    own = RunConfig.from_dict(ckpt.get("run_config"), f"{checkpoint}'s config")
    as_json = [json.loads(json.dumps(c.to_dict())) for c in (run_config, own)]  # tuples and lists alike
    differences = _differences(*as_json)
    held = [(name, *values) for name, *values in differences if _held(name)]
    said = "; ".join(f"{name} is {_short(mine)} there and {_short(theirs)} in {checkpoint.name}" for name, mine,
                     theirs in (held or [d for d in differences if d[0] != "train.steps"]))  # fmt: skip
    if held:
        what = " and ".join(sorted({HELD[_held(name)] for name, *_ in held}))
        raise SettingError(f"{config_path} disagrees with {checkpoint} on what the checkpoint holds ({what}): {said}; "
                           f"{', '.join(HELD)} must be the checkpoint's: put them back, or train a new run in "
                           "another <out>")  # fmt: skip
    if said and distributed.is_main():
        print(f"{config_path} differs from {checkpoint}'s own config: {said}; config.json wins, the run trains on "
              "with it")  # fmt: skip


def _held(name: str) -> str | None:
    """The key of :data:`HELD` that setting ``name`` (``net.hidden``) falls under, if any."""
    return next((key for key in HELD if name == key or name.startswith(key + ".")), None)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:36] + " ..."


def _differences(mine: dict, theirs: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """Each setting (``net.hidden``) whose value differs between two configs as dicts."""
    found = []
    for key in sorted(set(mine) | set(theirs), key=str):
        a, b = mine.get(key), theirs.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append((f"{prefix}{key}", a, b))
    return found


def train_run(
    run_config: RunConfig,
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
        run_config.train, run_dir, schedules=schedules_for(run_config), device=device,
        run_config=run_config.to_dict(), callbacks=[CSVLog(), *callbacks],
    )  # fmt: skip


@dataclass
class Run:
    """A trained run: its directory, config, and model and guide in eval mode."""

    directory: Path
    config: RunConfig
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
    """The run in ``run_dir`` with the weights of its best validation (or ``checkpoint``:
    ``"last.pt"``, those of its latest step). A missing checkpoint is refused in one line
    that says how far the run has got."""
    if not (Path(run_dir) / checkpoint).is_file():
        raise SettingError(_missing(Path(run_dir), checkpoint))
    ckpt = load_checkpoint(Path(run_dir) / checkpoint, device)
    if "net" not in ckpt["run_config"]:
        raise ValueError(f"{run_dir} was written by an older pyro-stcn (no 'net' in its config); train it again")
    run_config = RunConfig.from_dict(ckpt["run_config"], f"{Path(run_dir) / checkpoint}'s config")
    model, guide = build(run_config, device)
    model.load_state_dict(ckpt["model"])
    guide.load_state_dict(ckpt["guide"])
    model.eval(), guide.eval()
    return Run(Path(run_dir), run_config, model, guide)


def _missing(run_dir: Path, checkpoint: str) -> str:
    """Why ``run_dir`` has no ``checkpoint`` (best.pt: the run has not validated yet), and
    what to use instead, in the words of :class:`~pyro_stcn.errors.SettingError`."""
    last = run_dir / "last.pt"
    if checkpoint != "last.pt" and last.is_file():
        ckpt = load_checkpoint(last)
        step, first = ckpt["train_state"]["step"], ckpt["train_config"]["valid_every"]
        how_far = (f"has not reached its first validation (step {first}), which writes {checkpoint}" if step < first
                   else "kept none of its validations (a diverged one is not kept)")  # fmt: skip
        return (f"no checkpoint at {run_dir / checkpoint}: {run_dir} has trained {step} steps and {how_far}; give "
                f"<checkpoint> last.pt for the weights of step {step}")  # fmt: skip
    if (run_dir / "config.json").is_file():
        return (f"no checkpoint at {run_dir / checkpoint}: {run_dir} has none yet, it stopped before its first step "
                f"ended; train it with  pyro-stcn train --resume {run_dir}")  # fmt: skip
    return f"no checkpoint at {run_dir / checkpoint}: {run_dir} is not a run directory (no config.json there)"


IW_OVER = ("auto", "factors", "sequence")


def bound_factor_steps(model: nn.Module, iw_over: str) -> int | None:
    """The ``factor_steps`` of the IWAE bound: the model's own (``"factors"``; refused
    where its latents do not factorise), None for whole sequences (``"sequence"``), or
    the model's own where it has them, else None (``"auto"``)."""
    if iw_over not in IW_OVER:
        raise SettingError(f"unknown <iw_over> {iw_over!r}; valid: {', '.join(IW_OVER)}")
    steps = factor_steps_of(model) if iw_over != "sequence" else None
    if iw_over == "factors" and steps is None:
        raise SettingError(
            f"<iw_over> factors: the latents of a {type(model).__name__} do not factorise over time given x (its "
            "factor_steps is None), so only the sequence-level bound is valid; use <iw_over> sequence"
        )
    return steps


def score(run: Run, split: str = "test", iw: int | None = None, chunk: int = 10, seed: int = 0,
          progress=None, iw_over: str = "auto") -> bounds.Scores:  # fmt: skip
    """:func:`pyro_stcn.evaluation.bounds.score` of the run on ``split``: the -ELBO and the
    KL of each layer, and with ``iw`` K (a model with latents) the -IWAE bound from K draws
    (``chunk`` at a time) of each factor the model's latents split into (``iw_over="auto"``:
    per step for STCN, per sequence for the VRNN; ``"factors"`` insists on it,
    ``"sequence"`` draws whole sequences); ``progress`` is called with sequences done."""
    if split not in ("train", "valid", "test"):
        raise ValueError(f"unknown split {split!r}; valid: train, valid, test")
    if iw is not None and (iw < 1 or chunk < 1):
        raise SettingError(f"<iw> and <chunk> must be positive numbers of draws, got {iw} and {chunk}")
    return bounds.score(run.model.model, run.guide, getattr(run.data, split), iw, chunk, run.device, seed, progress,
                        bound_factor_steps(run.model, iw_over))  # fmt: skip


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
        raise SettingError(f"<num> {num}: expected at least 1 sequence")
    if steps is not None and steps < 1:
        raise SettingError(f"<steps> {steps}: expected at least 1 step to generate")
    if prime < 0:
        raise SettingError(f"<prime> {prime}: expected a number of given steps, 0 or more")
    steps = len(data.test[0]) if steps is None else steps
    values = plot_count(data, num) * steps * data.x_dim
    if values > MAX_SAMPLE_VALUES:
        raise SettingError(f"<num> {num} <steps> {steps}: {plot_count(data, num)} sequences × {steps} steps × "
                         f"{data.x_dim} values = {values:,} values to generate; expected at most "
                         f"{MAX_SAMPLE_VALUES:,}, so give fewer <steps> or <num>")  # fmt: skip
    if prime >= steps:
        raise SettingError(f"<prime> {prime} leaves nothing to generate in {steps} steps; give more <steps>")
    long_enough = [s for s in data.test if len(s) >= max(prime, 1)]
    if not long_enough:
        longest = max(map(len, data.test))
        raise SettingError(f"<prime> {prime}: no test sequence has that many steps (longest {longest})")
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


def contender(settings: dict, model: str, out: Path, data: Splits | None, device: torch.device,
              budget: float) -> tuple[Contender, Splits]:  # fmt: skip
    """One cell of the comparison, set up as ``train`` would with the same settings."""
    run_config, data = new_run_config({**settings, "model": model}, data=data)
    run_config.train.steps, run_config.train.budget = 10**9, budget  # the time budget ends training
    run_dir = out / f"{model}-{run_config.net.likelihood}"
    saved = run_dir / "config.json"
    if saved.exists() and RunConfig.from_dict(json.loads(saved.read_text()), str(saved)).without_budget() != (
        run_config.without_budget()
    ):
        raise SettingError(f"{run_dir} holds a run with other settings; give another <out> or remove it")
    run_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(run_config.to_dict(), indent=2))
    pyro.set_rng_seed(run_config.train.seed)  # the seed sets the initial weights too
    network, guide = build(run_config, device)
    column = PRINTED_LIKELIHOODS[run_config.net.likelihood]
    return Contender(model, column, network, guide, objective_for(run_config),
                     run_config.train, run_dir, schedules_for(run_config), run_config.to_dict()), data  # fmt: skip
