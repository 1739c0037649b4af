"""``bench authors``: the authors' own MS-STCN training step beside ours, in one run.

The authors' code (`carl-andersson/MS-STCN <https://github.com/carl-andersson/MS-STCN>`_,
PyTorch) is not part of this package: it is imported at run time from a checkout the
user names, with that directory on ``sys.path`` only while their modules import and
their model is built (:func:`their_modules`). Their package imports itself by the
top-level name ``model`` (``from model.base import ...``), so it must be ``model`` in
``sys.modules`` meanwhile; any module of that name there before is set aside and put
back, and theirs are removed, so nothing of theirs shadows ours or a later import.
Their data package is never imported (it needs PyTables and the data set): the
normaliser's training-set statistics are computed from the benchmark's batch.

Both steps run on the same random batch, (dx, dy) Gaussian and a 0/1 pen bit, every
step real (:meth:`pyro_stcn.bench.benchmark.Setup.batch`); their model sees it as their
loader gives it, channels first in their order (pen, dx, dy), with every length T.

- Theirs (:class:`TheirStep`): one pass of the loop body of ``train()`` in their
  ``train.py``, restated (it is a closure over their data loader): the per-step updates
  of the free-bits threshold and of β, ``zero_grad``, the forward pass, their loss
  ``calc_ll_estimate`` (linear free bits per latent unit and step), backward,
  ``clip_grad_value_`` then ``clip_grad_norm_``, Adam's step, and ``loss.item()`` for
  their running mean. Their model, optimizer and training options are those their
  ``default_options.py`` ships for IAM-OnDB (``default_model_options_iamondb``).
  Where those options' sizes differ from paper 2's, their model is built a second time
  at paper 2's widths and Gaussian components (:func:`with_sizes`).
- Ours (:meth:`pyro_stcn.training.loop.Trainer.step`): the whole training step,
  in paper 2's IAM-OnDB layout (``models/ms_stcn_layouts.py``) with the independent guide
  under linear free bits, λ as the MS-STCN preset schedules it (the authors' schedule too);
  and, where their sizes differ from ours, the same step of our model built at their sizes.
  Each of our steps is set against theirs built alike.

Every time is the median of interleaved repeats (:func:`pyro_stcn.bench.benchmark.interleaved`).
"""

import copy
import dataclasses
import importlib
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from pyro_stcn.bench.benchmark import Setup, interleaved, ms_stcn_setup
from pyro_stcn.errors import SettingError
from pyro_stcn.inference.schedules import halving
from pyro_stcn.models import MSSTCNConfig
from pyro_stcn.nets import parameter_count
from pyro_stcn.runs.presets import PRESETS
from pyro_stcn.training.config import TrainConfig, TrainState
from pyro_stcn.training.loop import Trainer

REPOSITORY = "https://github.com/carl-andersson/MS-STCN"
THEIR_FILES = ["default_options.py", "model/Model.py", "model/base.py", "model/ModelState.py"]
THEIR_NAMES = ["model", "default_options"]  # the top-level names their modules import themselves by
QUICK = (2, 64)  # B, T of --quick
SCHEDULE = PRESETS["blizzard-ms-stcn-fw200"]  # our MS-STCN preset: its λ and λ's half-life
SKIPPED = ("bench authors: skipped, no checkout of the authors' code given; to time their MS-STCN step beside "
           f"ours: git clone {REPOSITORY} && pyro-stcn bench authors --authors MS-STCN")  # fmt: skip


def _theirs(name: str) -> bool:
    return any(name == top or name.startswith(top + ".") for top in THEIR_NAMES)


@contextmanager
def their_modules(directory: Path) -> Iterator[None]:
    """While inside, ``directory`` is first on ``sys.path`` and the names in
    :data:`THEIR_NAMES` are free in ``sys.modules``; afterwards ``sys.path`` and
    ``sys.modules`` are as they were (their modules gone, any others of those names back).
    Their objects keep working after: they hold their modules, and their code imports
    nothing more once built (it imports inside functions only while a model is built)."""
    saved = {name: sys.modules.pop(name) for name in list(sys.modules) if _theirs(name)}
    entry, bytecode = str(directory.resolve()), sys.dont_write_bytecode
    sys.path.insert(0, entry)
    sys.dont_write_bytecode = True  # leave their checkout as it was: no __pycache__
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.dont_write_bytecode = bytecode
        sys.path.remove(entry)
        sys.path_importer_cache.pop(entry, None)
        for name in [name for name in sys.modules if _theirs(name)]:
            del sys.modules[name]
        sys.modules.update(saved)


def _refuse(directory: Path, what: str) -> SettingError:
    return SettingError(f"<authors> {directory}: {what}")


def check_checkout(directory: Path) -> None:
    """Refuse a directory that is not a checkout of the authors' repository: one line
    naming it and the files it lacks (:class:`~pyro_stcn.errors.SettingError`)."""
    if not directory.is_dir():
        raise _refuse(directory, "no such directory; expected a checkout of " + REPOSITORY)
    missing = [name for name in THEIR_FILES if not (directory / name).is_file()]
    if missing:
        raise _refuse(directory, f"not a checkout of {REPOSITORY}: missing {', '.join(missing)}")


def _batch_statistics(x: Tensor) -> SimpleNamespace:
    """What their loader's ``calcStatistics`` gives their model: per-channel mean and
    standard deviation (ddof 1) of ``x [B, C, T]``, numpy arrays ``[C, 1]``."""
    flat = x.detach().cpu().transpose(0, 1).reshape(x.shape[1], -1).double().numpy()
    return SimpleNamespace(mean=flat.mean(1, keepdims=True), std=flat.std(1, ddof=1, keepdims=True))


@dataclass
class TheirStep:
    """The authors' model, their ``ModelState`` (optimizer, free-bits threshold and β),
    options and loss, and one training step of theirs on ``x [B, C, T]``."""

    model: nn.Module
    state: object  # their ModelState
    options: dict  # their default_options, as shipped
    loss: Callable[..., Tensor]  # their calc_ll_estimate
    x: Tensor
    lengths: Tensor

    def __call__(self) -> float:
        """One pass of their ``train()`` loop body (their ``train.py``) on the shipped
        options: the λ and β updates, zero_grad, loss, backward, both clips, Adam."""
        o, s = self.options["train_options"], self.state
        fb = o["freebits_options"]
        s.freebits *= fb["scheduler"]["decay_rate"] ** (1.0 / fb["scheduler"]["decay_steps"])
        s.annealing = min(1.0, s.annealing + 1.0 / o["annealing_options"]["scheduler"]["rate"])
        s.optimizer.zero_grad()
        with warnings.catch_warnings():  # their mixture of Gaussians warns that it lacks arg_constraints
            warnings.filterwarnings("ignore", message=".*does not define `arg_constraints`")
            out = self.model(self.x, lengths=self.lengths, iw_samples=o["iw_samples"])
        loss = self.loss(self.x, *out, self.lengths, o["iw_samples"], s.annealing, s.freebits, fb,
                         ll_normalization=self.options["ll_normalization"],
                         ind_latentstate=self.options["ind_latentstate"])  # fmt: skip
        loss.backward()
        nn.utils.clip_grad_value_(self.model.parameters(), o["grad_clip"])
        nn.utils.clip_grad_norm_(self.model.parameters(), o["grad_clip_norm"])
        s.optimizer.step()
        return loss.item()  # their loop reads it every step, for its running mean


def their_step(directory: Path, x: Tensor, device: torch.device, sizes: dict | None = None) -> TheirStep:
    """The authors' IAM-OnDB model and training step from their checkout at ``directory``,
    on our batch ``x [B, T, (dx, dy, pen)]``, checked by one step: their IAM-OnDB model
    options as shipped, or with ``sizes`` (:func:`with_sizes`). Their model's weights are
    drawn from ``torch.manual_seed(0)``, as ours are in the benchmark."""
    check_checkout(directory)
    xs = x[..., [2, 0, 1]].transpose(1, 2).contiguous()  # their order and layout: [B, (pen, dx, dy), T]
    lengths = torch.full((len(x),), x.shape[1], dtype=torch.long, device=device)
    with their_modules(directory):
        try:
            shipped = importlib.import_module("default_options")
            Model = importlib.import_module("model.Model").Model
            ModelState = importlib.import_module("model.ModelState").ModelState
            loss = importlib.import_module("model.base").calc_ll_estimate
        except Exception as e:  # their code may raise anything as it imports; say what, in one line
            raise _refuse(directory, f"importing their modules failed: {type(e).__name__}: {e}") from None
        options = copy.deepcopy(shipped.default_options)
        # as their run.py sets options given to it: the model's replace the default (Blizzard's) whole
        options["model_options"] = copy.deepcopy(shipped.default_model_options_iamondb)
        train = options["train_options"]
        try:
            if sizes is not None:
                options["model_options"] = with_sizes(options["model_options"], sizes)
            torch.manual_seed(0)
            model = Model(n_channels=xs.shape[1], statistics=_batch_statistics(xs),
                          **copy.deepcopy(options["model_options"])).to(device)  # fmt: skip
            model.train()
            state = ModelState(seed=options["seed"], model=model, optimizer=options["optimizer"],
                               optimizer_options=options[options["optimizer"] + "_options"],
                               init_lr=train["init_lr"], init_freebits=train["freebits_options"]["init_threshold"],
                               init_annealing=train["annealing_options"]["init_annealing"])  # fmt: skip
        except Exception as e:
            what = "their IAM-OnDB model" + ("" if sizes is None else " at paper 2's sizes")
            raise _refuse(directory, f"building {what} failed: {type(e).__name__}: {e}") from None
    step = TheirStep(model, state, options, loss, xs, lengths)
    try:
        step()
    except Exception as e:
        raise _refuse(directory, f"their training step failed: {type(e).__name__}: {e}") from None
    return step


# -- their sizes against ours ------------------------------------------------------------


def _dists(pred_options: dict) -> list[dict]:
    """Their predictive distribution's parts: the sub-distributions of a ``combination``,
    else the one distribution."""
    return pred_options["sub_dists"] if pred_options["type"] == "combination" else [pred_options]


def their_sizes(model_options: dict) -> dict[str, object]:
    """Their layers' widths, latent units, strides, bottom-up dilations and Gaussian
    components of p(dx, dy), read from their model options as their builders read them
    (a layer's width is ``size``, else ``latent_size × size_multiplier``)."""
    vae = model_options["vae_options"]
    layers = [{**vae["default_ar_layer"], **layer} for layer in vae["ar_layers_options"]]
    widths = [lay["size"] if lay.get("size") is not None else lay["latent_size"] * lay.get("size_multiplier", 8)
              for lay in layers]  # fmt: skip
    pred = model_options["pred_options"]
    components = [1 if d["type"] == "normal" else d.get("n_components") for d in _dists(pred) if "normal" in d["type"]]
    if len(components) != 1 or components[0] is None:
        raise ValueError(f"their pred_options {pred} have no single normal or normal_mixture distribution")
    return {
        "widths": widths,
        "latent units": [lay["latent_size"] for lay in layers],
        "strides": [lay["stride"] for lay in layers],
        "bottom-up dilations": [list(lay["inf_pre_options"]["dilation"]) for lay in layers],
        "Gaussian components of p(dx, dy)": components[0],
    }


def with_sizes(model_options: dict, sizes: dict[str, object]) -> dict:
    """Their model options with the widths and Gaussian components of ``sizes`` (as
    :func:`their_sizes` gives them), all else as given: each layer's ``size``, which their
    builders take before latent units × ``size_multiplier``, and p(dx, dy) a
    ``normal_mixture`` of that many components (their ``normal`` where it is one). Where
    the options differ from ``sizes`` in anything else (latent units, strides,
    dilations), it refuses: the result would not be the layout ``sizes`` describes."""
    options = copy.deepcopy(model_options)
    layers = options["vae_options"]["ar_layers_options"]
    if len(layers) != len(sizes["widths"]):
        raise ValueError(f"their options have {len(layers)} layers; the sizes give {len(sizes['widths'])}")
    for layer, width in zip(layers, sizes["widths"]):
        layer["size"] = width
    for dist in _dists(options["pred_options"]):
        if "normal" in dist["type"]:
            components = sizes["Gaussian components of p(dx, dy)"]
            dist["type"] = "normal_mixture" if components > 1 else "normal"
            dist.pop("n_components", None)
            if components > 1:
                dist["n_components"] = components
    differ = [what for what, value in their_sizes(options).items() if value != sizes[what]]
    if differ:
        raise ValueError(f"their options differ from those sizes in {', '.join(differ)}, which only widths and "
                         "Gaussian components can be set to")  # fmt: skip
    return options


def our_sizes(config: MSSTCNConfig) -> dict[str, object]:
    """The same figures as :func:`their_sizes`, of one of our configurations."""
    return {"widths": config.channels, "latent units": config.z_dims, "strides": config.strides,
            "bottom-up dilations": config.dilations, "Gaussian components of p(dx, dy)": config.components}  # fmt: skip


def at_sizes(config: MSSTCNConfig, sizes: dict[str, object]) -> MSSTCNConfig:
    """``config`` with the sizes of :func:`their_sizes`."""
    return dataclasses.replace(
        config, channels=sizes["widths"], z_dims=sizes["latent units"], strides=sizes["strides"],
        dilations=sizes["bottom-up dilations"], components=sizes["Gaussian components of p(dx, dy)"],
    )  # fmt: skip


# -- the contest ----------------------------------------------------------------------------


def our_step(setup: Setup, x: Tensor, mask: Tensor, run_dir: Path, device: torch.device) -> Callable[[], dict]:
    """Our :meth:`Trainer.step` of ``setup``'s model and guide on (x, mask), λ scheduled
    as the MS-STCN preset schedules it. The trainer writes nothing in ``run_dir`` (its
    steps do not; only :func:`pyro_stcn.training.loop.train` checkpoints)."""
    lam = partial(halving, start=SCHEDULE["lam"], half_life=SCHEDULE["lam_half_life"])
    modules = {"model": setup.model, "guide": setup.guide}
    trainer = Trainer(setup.model.model, setup.guide, modules, setup.objective, TrainConfig(batch_size=len(x)),
                      run_dir, {"lam": lam}, device, {})  # fmt: skip
    state = TrainState()
    return lambda: trainer.step(state, (x, mask))


@dataclass
class Contender:
    name: str
    network: str
    parameters: int
    step: Callable[[], object]
    against: str | None = None  # ours: the network of the authors' row built alike


@dataclass
class Contest:
    """The contenders (the authors' first), the sizes compared and the training settings."""

    batch: tuple[int, int]  # B, T timed
    their_batch: tuple[int, int]  # B, T their options train with on IAM-OnDB
    contenders: list[Contender]
    sizes: dict[str, tuple[object, object]]  # figure -> (theirs, ours)
    settings: dict[str, tuple[str, str]]  # setting -> (theirs, ours)


def prepare(directory: Path, device: torch.device, quick: bool, run_dir: Path) -> Contest:
    """Build the authors' step and ours on one batch, B = 16, T = 1024 (``quick``: B = 2,
    T = 64, the networks at full size), each in both layouts where their shipped IAM-OnDB
    options differ from paper 2's: theirs as shipped and at paper 2's sizes
    (:func:`with_sizes`), ours in paper 2's layout and at their sizes, so that each of our
    steps is set against theirs built alike."""
    setup = ms_stcn_setup(device)
    batch = QUICK if quick else (setup.batch_size, setup.length)
    x, mask = setup.batch(*batch, device)
    theirs = their_step(directory, x, device)
    sizes, ours = their_sizes(theirs.options["model_options"]), our_sizes(setup.model.config)
    shipped, paper = "their IAM-OnDB options", "paper 2's IAM-OnDB layout"
    contenders = [Contender("authors'", shipped, parameter_count(theirs.model), theirs)]
    if sizes != ours:
        alike = their_step(directory, x, device, sizes=ours)
        contenders.append(Contender("authors'", paper, parameter_count(alike.model), alike))
    step = our_step(setup, x, mask, run_dir / "ours", device)
    size = parameter_count(setup.model, setup.guide)
    contenders.append(Contender("ours", paper, size, step, against=contenders[-1].network))
    if sizes != ours:
        alike = ms_stcn_setup(device, config=at_sizes(setup.model.config, sizes))
        step = our_step(alike, x, mask, run_dir / "alike", device)
        contenders.append(Contender("ours", shipped, parameter_count(alike.model, alike.guide), step, against=shipped))
    their_batch = (theirs.options["train_options"]["batch_size"], theirs.options["iamondb_options"]["seq_len_train"])
    sizes = {k: (sizes[k], ours[k]) for k in sizes}
    return Contest(batch, their_batch, contenders, sizes, _settings(theirs.options))


def _settings(options: dict) -> dict[str, tuple[str, str]]:
    """Their training options against ours (``TrainConfig``'s defaults, the preset's λ)."""
    t, ours = options["train_options"], TrainConfig()
    fb = t["freebits_options"]
    return {
        "gradient clipping": (f"each value at {t['grad_clip']:g}, then the norm at {t['grad_clip_norm']:g}",
                              f"the norm at {ours.clip_norm:g}"),
        "free bits": (f"{fb['threshold_behaviour']}, λ {fb['init_threshold']:g} × {fb['scheduler']['decay_rate']:g} "
                      f"every {fb['scheduler']['decay_steps']:,} steps",
                      f"linear, λ {SCHEDULE['lam']:g} × 0.5 every {SCHEDULE['lam_half_life']:,} steps"),
        "learning rate": (f"{t['init_lr']:g}", f"{ours.lr:g}"),
    }  # fmt: skip


def run(contest: Contest, repeats: int) -> dict[tuple[str, str], float]:
    """Median seconds of each contender's step, keyed by its row's (name, network)."""
    return interleaved({(c.name, c.network): c.step for c in contest.contenders}, repeats)


def _show(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(_show(v) for v in value) if not isinstance(value[0], list) else "; ".join(map(_show, value))
    return str(value)


def print_contest(
    contest: Contest, seconds: dict[tuple[str, str], float], out: Callable[[str], None] = print
) -> None:
    """What each step does, the steps' table (parameters, median seconds, each of ours ÷
    the authors' built alike), then where their shipped options and paper 2's differ."""
    (batch, length), (their_batch, their_length) = contest.batch, contest.their_batch
    out(f"\nMS-STCN training steps on one random handwriting batch, B = {batch}, T = {length} (their IAM-OnDB "
        f"options train at B = {their_batch}, T = {their_length}). Authors': their "
        "train.py's step (free bits and β updated, zero_grad, forward, calc_ll_estimate, backward, clip_grad_value_, "
        "clip_grad_norm_, Adam, loss.item()). Ours: Trainer.step (λ updated, zero_grad, the independent guide's "
        "linear-free-bits ELBO, backward, clip_grad_norm_, Adam, one read of the step's figures)")  # fmt: skip
    out("| step | network | parameters | median step (s) | ours ÷ authors' built alike |")
    out("|---|---|---|---|---|")
    for c in contest.contenders:
        time, reference = seconds[c.name, c.network], seconds.get(("authors'", c.against))
        ratio = "—" if reference is None else f"{time / reference:.2f}"
        out(f"| {c.name} | {c.network} | {c.parameters:,} | {time:.3f} | {ratio} |")
    out("\nTheir IAM-OnDB options against ours (* where they differ)")
    out("| | authors' | ours |")
    out("|---|---|---|")
    for what, (a, b) in {**contest.sizes, **contest.settings}.items():
        out(f"| {what}{' *' if a != b else ''} | {_show(a)} | {_show(b)} |")
