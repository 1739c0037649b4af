"""A run's config (:class:`RunConfig`): one typed, checked description of a run, which
its directory keeps as ``config.json``::

    {"data": "digits", "data_args": {}, "model": "stcn-dense", "guide": "ladder",
     "objective": "linear-free-bits", "kl_gradient": "control-variate", "beta_rate": ..., "lam": ...,
     "lam_half_life": ..., "test_iw": 100,
     "net": {... the model's config ...}, "train": {... TrainConfig ...}}

built from settings by :func:`new_run_config` (the settings given, then the preset they
name, then the defaults); and what a config makes: the data, the model and guide, the
objective and its schedules. Settings are named as the command line's options without
their dashes (``z_dims`` for ``--z-dims``); errors name them so
(:class:`~pyro_stcn.errors.SettingError`), and the command line names its flags. What a
model is (its config, sizes, flags and guides) comes from the registry
(:mod:`pyro_stcn.runs.registry`).
"""

import dataclasses
import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pyro
import torch
from torch import nn

from pyro_stcn.data import DATASETS, FORMATS, OPTIONS, Splits, pad_batch
from pyro_stcn.errors import SettingError
from pyro_stcn.inference import OBJECTIVES, make_objective
from pyro_stcn.inference.objectives import LayerwiseELBO
from pyro_stcn.inference.schedules import halving, linear_warmup
from pyro_stcn.nets.likelihoods import SUITABLE
from pyro_stcn.nets.normalise import Standardisation
from pyro_stcn.runs.presets import apply_preset
from pyro_stcn.runs.registry import NETWORK_FLAGS, default_guide, family_of, make_guide, make_model
from pyro_stcn.training import TrainConfig

IW_SAMPLES = 5  # --objective iwae: draws of each step's latents
# Sized for the default run: digits on 2 CPU cores in under 5 minutes.
DEFAULT_TRAIN = TrainConfig(steps=1500, batch_size=32, lr=2e-3, lr_decay=0.8, valid_every=100)


@dataclass
class RunConfig:
    """A run: its data, its model and guide, the objective and how it is estimated, the
    model's config (``net``, the model family's config dataclass) and the training's
    (``train``). The defaults are the default run's."""

    net: Any
    train: TrainConfig = field(default_factory=lambda: dataclasses.replace(DEFAULT_TRAIN))
    data: str = "digits"
    data_args: dict = field(default_factory=dict)  # the loader's options (directory, fw, ...)
    model: str = "stcn-dense"
    guide: str = "ladder"
    # Linear free bits at λ0 = 0.02 nats per latent dimension, halved every 500 steps: on the
    # digits it keeps every layer in use (3.7-4.2 nats per image) and bounds -log p(x) better
    # than the plain ELBO, whose latents collapse (docs: "Keeping the latents in use").
    # Paper 2's λ0 = 0.5 halved every 300k steps is its preset's (blizzard-ms-stcn-fw200).
    objective: str = "linear-free-bits"
    kl_gradient: str = "control-variate"  # the objective's estimator of sampled KLs' gradients
    beta_rate: float = 1e-4  # annealed: β's rise per step
    lam: float = 0.02  # free bits: λ0, nats per latent dimension
    lam_half_life: float = 500  # free bits: steps to halve λ
    test_iw: int = 100  # the training report's importance-weighted bound: K draws of each factor (0: none)
    iw_samples: int | None = None  # iwae: K draws of each step's latents
    preset: str | None = None  # the paper experiment the settings came from

    def check(self) -> None:
        """Refuse a config that cannot be run, naming the setting."""
        self.train.check()
        if self.objective not in OBJECTIVES:
            raise SettingError(f"unknown <objective> {self.objective!r}; valid: {', '.join(OBJECTIVES)}")
        takes = OBJECTIVES[self.objective].kl_gradients
        if self.kl_gradient not in takes:
            raise SettingError(f"<kl_gradient> {self.kl_gradient} does not apply to <objective> {self.objective}, "
                               f"which takes {' or '.join(takes)} (default {takes[0]})")  # fmt: skip
        if not 0 < self.beta_rate < math.inf:
            raise SettingError(f"<beta_rate>: expected a positive number (β's rise per step), got {self.beta_rate:g}")
        if not 0 <= self.lam < math.inf:
            raise SettingError(f"<lam>: expected nats per latent dimension, 0 or more, got {self.lam:g}")
        if not self.lam_half_life > 0:
            raise SettingError(f"<lam_half_life>: expected a positive number of steps, got {self.lam_half_life:g}")
        if not isinstance(self.test_iw, int) or self.test_iw < 0:
            raise SettingError(f"<test_iw>: expected a number of draws, 0 or more, got {self.test_iw}")
        if self.objective == "iwae" and (not isinstance(self.iw_samples, int) or self.iw_samples < 1):
            raise SettingError(f"<iw_samples>: the importance-weighted objective needs a positive number of "
                               f"samples, got {self.iw_samples!r}")  # fmt: skip
        if self.objective != "iwae" and self.iw_samples is not None:
            raise SettingError(f"<iw_samples> applies to <objective> iwae, not {self.objective}")

    def to_dict(self) -> dict:
        """The config as ``config.json`` keeps it (and checkpoints): plain data."""
        saved = dataclasses.asdict(self)
        return {k: v for k, v in saved.items() if v is not None or k not in ("iw_samples", "preset")}

    @classmethod
    def from_dict(cls, saved: Any, where: str = "a run's config") -> "RunConfig":
        """A config from its ``config.json`` (or a checkpoint's copy, ``where``), written by
        this version or an earlier one: runs saved before ``kl_gradient`` existed trained
        with the pathwise gradient, and before ``test_iw``, reported no bound."""
        if not isinstance(saved, dict) or not isinstance(saved.get("train"), dict) or "net" not in saved:
            raise ValueError(f"{where} has no 'train' and 'net' settings; expected the config of a run")
        values = {"kl_gradient": "pathwise", "test_iw": 0, **saved}
        if values.get("objective") == "iwae":
            values.setdefault("iw_samples", IW_SAMPLES)
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"{where} holds settings this version does not know: {', '.join(unknown)}")
        try:
            values["train"] = TrainConfig(**values["train"])
            values["net"] = family_of(values["model"]).config(**values["net"])
        except TypeError as e:
            raise ValueError(f"{where}: {e}") from None
        return cls(**values)

    def without_budget(self) -> dict:
        """The config less its time budget (a rerun of a comparison with more time trains on)."""
        saved = self.to_dict()
        return {**saved, "train": {k: v for k, v in saved["train"].items() if k != "budget"}}


TRAIN_SETTINGS = ["steps", "batch_size", "lr", "lr_decay", "seed", "valid_every", "valid_sequences", "crop", "budget",
                  "bf16", "compile"]  # fmt: skip
RUN_SETTINGS = ["data", "model", "objective", "beta_rate", "lam", "lam_half_life", "test_iw", "preset"]
DATA_SETTINGS = {"fw": "fw", "directory": "data_dir", "binarise": "binarise", "dequantise": "dequantise",
                 "split_lists": "split_lists"}  # a loader's option -> the setting that gives it  # fmt: skip


def given(settings: dict, names) -> dict:
    """The settings among ``names`` that were given (a zero counts, None and False do not)."""
    return {n: settings[n] for n in names if settings.get(n) is not None and settings.get(n) is not False}


def new_run_config(settings: dict, data: Splits | None = None) -> tuple[RunConfig, Splits]:
    """A new run's config from ``settings``, then the preset they name, then the
    defaults, checked; and the run's data (loaded unless given)."""
    if settings.get("preset"):
        settings, _ = apply_preset(settings, settings["preset"])
    chosen = given(settings, RUN_SETTINGS)
    model = chosen.get("model", RunConfig.model)
    data_name = chosen.get("data", RunConfig.data)
    objective = chosen.get("objective", RunConfig.objective)
    train = dataclasses.replace(DEFAULT_TRAIN, **given(settings, TRAIN_SETTINGS))
    train.check()  # before the data load: the cheap checks first
    iw_samples = settings.get("iw_samples")
    if iw_samples is None and objective == "iwae":
        iw_samples = IW_SAMPLES
    run_config = RunConfig(
        net=None, train=train, **chosen, guide=settings.get("guide") or default_guide(model),
        data_args=data_args(settings, data_name), kl_gradient=settings.get("kl_gradient") or kl_gradient(objective),
        iw_samples=iw_samples,
    )  # fmt: skip
    run_config.check()
    data = load_data(run_config) if data is None else data
    run_config.net = net_config(settings, model, data, data_name)
    if objective == "iwae":
        check_objective(run_config, data)
    return run_config, data


def kl_gradient(objective: str) -> str:
    """The default gradient estimator of ``objective``'s sampled KLs (control-variate;
    dreg for iwae)."""
    return OBJECTIVES[objective].kl_gradients[0]


def data_args(settings: dict, data: str) -> dict:
    """The loader options of data set ``data`` from the settings."""
    if data not in DATASETS and data not in FORMATS:
        raise ValueError(f"unknown data {data!r}; valid: {', '.join([*DATASETS, *FORMATS])}")
    present = given(settings, DATA_SETTINGS.values())  # a zero counts: 0 is not None
    chosen = {option: present[name] for option, name in DATA_SETTINGS.items() if name in present}
    wrong = sorted(set(chosen) - OPTIONS.get(data, set()))
    if wrong:
        raise SettingError(f"<{DATA_SETTINGS[wrong[0]]}> does not apply to <data> {data}")
    if chosen.get("fw", 1) < 1:
        raise SettingError(f"<fw>: expected a positive number of samples per step, got {chosen['fw']}")
    if data in FORMATS and "directory" not in chosen:
        raise SettingError(f"<data> {data} reads your files: give <data_dir>")
    return chosen


def load_data(run_config: RunConfig) -> Splits:
    """The run's data set, with its options (``fw``, ``directory``, ...)."""
    return {**DATASETS, **FORMATS}[run_config.data](**run_config.data_args)


def net_config(settings: dict, model: str, data: Splits, data_name: str = "") -> Any:
    """The model's config from the network settings given, its family's defaults and
    the data: x_dim and the input standardisation always come from the training split,
    the likelihood from the data unless ``likelihood`` picks another that suits it."""
    family = family_of(model)
    likelihood = settings.get("likelihood") or data.likelihood
    if likelihood not in SUITABLE[data.likelihood]:
        raise SettingError(
            f"<likelihood> {likelihood} does not suit <data> {data_name or 'this data'}, whose values call for "
            f"{' or '.join(SUITABLE[data.likelihood])}"
        )
    sizes = given(settings, NETWORK_FLAGS)
    wrong = [s for s in sizes if s not in family.flags]
    if wrong:
        takes = ", ".join(f"<{f}>" for f in sorted(family.flags))
        raise SettingError(f"<{wrong[0]}> does not apply to <model> {model}, which takes {takes}")
    for name, values in sizes.items():
        if isinstance(values, list) and not family.per_layer >= {name}:
            if len(values) > 1:
                raise SettingError(f"<model> {model} takes one value for <{name}>, got {len(values)}")
            sizes[name] = values[0]
        if isinstance(values, (int, list)) and not isinstance(values, bool):
            if min(values if isinstance(values, list) else [values]) < 1:
                raise SettingError(f"<{name}> must be positive, got {values}")
    units = Standardisation.fit(data.train, likelihood)  # training split only
    from_data = {"x_dim": data.x_dim, "likelihood": likelihood, "shift": units.shift, "scale": units.scale}
    return family.configure(model, sizes, from_data)


def build(run_config: RunConfig, device: torch.device | str = "cpu") -> tuple[nn.Module, nn.Module]:
    """Model and guide from a run config, with fresh weights drawn from the current seed."""
    pyro.clear_param_store()
    model = make_model(run_config.model, run_config.net).to(device)
    guide = make_guide(run_config.guide, model).to(device)
    return model, guide


def objective_for(run_config: RunConfig) -> LayerwiseELBO:
    """The run's objective, its β and λ to be set each step by :func:`schedules_for`."""
    options = {"kl_gradient": run_config.kl_gradient}
    if run_config.objective == "iwae":
        options["samples"] = run_config.iw_samples
    return make_objective(run_config.objective, **options)


def check_objective(run_config: RunConfig, data: Splits) -> None:
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
            raise SettingError(f"<objective> {run_config.objective} does not fit <model> {run_config.model}: "
                               f"{e}") from None  # fmt: skip
    pyro.clear_param_store()


def schedules_for(run_config: RunConfig) -> dict:
    """β warm-up for ``annealed``, halving λ for the free-bits objectives."""
    if run_config.objective == "annealed":
        return {"beta": partial(linear_warmup, rate=run_config.beta_rate)}
    if run_config.objective in ("free-bits", "linear-free-bits"):
        return {"lam": partial(halving, start=run_config.lam, half_life=run_config.lam_half_life)}
    return {}
