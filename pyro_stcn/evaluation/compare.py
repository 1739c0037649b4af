"""Side-by-side comparison: models trained for the same wall-clock budget on the same
data, all scored on the same test split, as in paper 1's Tables 1 and 2.

Each :class:`Contender` is one cell of the table: a model (row) with a likelihood
(column), built with its guide and objective. :func:`compare` trains each in its own
run directory with :func:`pyro_stcn.training.loop.train` under ``TrainConfig.budget`` (so an
interrupted comparison resumes where it stopped), restores its best validation
checkpoint, and scores it on the test split:

- models with latent variables: the -ELBO and the -IWAE bound with K draws
  (``pyro_stcn.evaluation.bounds``), both upper bounds on -log p(x); the bound is
  importance-weighted per factor where the model's latents factorise over time (per
  step for STCN, per block of the coarsest layer for MS-STCN: ``pyro_stcn.inference.factors``),
  per sequence otherwise (the VRNN);
- models without (Wavenet, Wavenet-dense, RNN): the exact -log p(x), which is their
  -ELBO, since the KL term is empty.

All in nats per sequence, summed over time and dimensions and averaged over the test
sequences, as both papers' tables; lower is better (the papers print log-likelihoods).

References:
    - [1] Aksan & Hilliges, "STCN", ICLR 2019, Tables 1 and 2.
    - [2] Burda et al., "Importance Weighted Autoencoders", ICLR 2016.
"""

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from pyro_stcn.data.batching import Splits
from pyro_stcn.evaluation.bounds import BoundReport, ElboReport, score
from pyro_stcn.evaluation.plots import plot_validation_curves, read_log
from pyro_stcn.inference.factors import factor_label, factor_steps_of
from pyro_stcn.inference.objectives import LayerwiseELBO
from pyro_stcn.nets import parameter_count
from pyro_stcn.training import CSVLog, ProgressBar, TrainConfig, train


@dataclass
class Contender:
    """One model, with its guide, objective and training settings, in one column."""

    model: str  # the row, e.g. "stcn-dense"
    likelihood: str  # the column, e.g. "gmm"
    network: nn.Module  # ``network.model(x, mask)`` is the Pyro model
    guide: nn.Module
    objective: LayerwiseELBO
    train_config: TrainConfig
    run_dir: Path
    schedules: dict[str, Callable[[int], float]] = dataclasses.field(default_factory=dict)
    run_config: dict | None = None  # stored in its checkpoints


@dataclass
class ComparisonRow:
    """A contender's test figures and how it was trained."""

    model: str
    likelihood: str
    parameters: int
    steps: int
    seconds: float
    best_step: int
    stopped_early: bool  # by the patience rule, before the budget ran out
    neg_elbo: ElboReport  # the exact -log p(x) when there are no latents
    neg_iwae: BoundReport | None  # None without latents
    iwae_over: str  # what the bound is importance-weighted over: "per step", "per sequence", ...
    curve: tuple[list[float], list[float]]  # validation: seconds, -ELBO

    @property
    def exact(self) -> bool:
        return self.neg_iwae is None


def compare(
    contenders: list[Contender],
    data: Splits,
    budget_seconds: float,
    iw_samples: int = 100,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> list[ComparisonRow]:
    """Train each contender for ``budget_seconds`` (or until it stops early) and score
    it on ``data.test``: -ELBO, and the -IWAE bound with ``iw_samples`` draws if it has
    latent variables."""
    if budget_seconds <= 0 or iw_samples < 1:
        raise ValueError(f"the budget and the IWAE draws must be positive, got {budget_seconds} s and {iw_samples}")
    rows = []
    for i, c in enumerate(contenders, 1):
        size = parameter_count(c.network, c.guide)
        tqdm.write(f"[{i}/{len(contenders)}] {c.model}, {c.likelihood} ({size:,} parameters): {c.run_dir}")
        result = train(
            c.network.model, c.guide, {"model": c.network, "guide": c.guide}, c.objective, data,
            dataclasses.replace(c.train_config, budget=budget_seconds), c.run_dir, schedules=c.schedules,
            device=device, run_config=c.run_config, callbacks=[CSVLog(), *([ProgressBar()] if progress else [])],
        )  # fmt: skip
        c.network.eval(), c.guide.eval()
        factor_steps = factor_steps_of(c.network)
        with tqdm(total=len(data.test), desc=f"IWAE, K = {iw_samples}", disable=not progress) as bar:
            figures = score(c.network.model, c.guide, data.test, iw_samples, device=device, progress=bar.update,
                            factor_steps=factor_steps)  # fmt: skip
        log = read_log(c.run_dir / "log.csv")
        curve = (log["valid_seconds"], log["valid_loss"])
        row = ComparisonRow(c.model, c.likelihood, size, result.last_step, result.seconds, result.best_step,
                            result.stopped_early, figures.neg_elbo, figures.neg_iwae, factor_label(factor_steps),
                            curve)  # fmt: skip
        tqdm.write(f"  {cell(row)} nats per sequence after {row.steps} steps in {row.seconds:.0f} s")
        rows.append(row)
    return rows


def cell(score: ComparisonRow) -> str:
    """A table cell: the exact NLL, or the -IWAE bound with the -ELBO beside it."""
    e = score.neg_elbo
    if score.exact:
        return f"{e.per_sequence:.2f} ± {e.stderr:.2f}"
    b = score.neg_iwae
    return f"≤ {b.per_sequence:.2f} ± {b.stderr:.2f} (ELBO {e.per_sequence:.2f})"


def comparison_table(
    scores: list[ComparisonRow], title: str, iw_samples: int, names: dict[str, str] | None = None
) -> str:
    """Markdown in the layout of paper 1's Table 1: models as rows, likelihoods as
    columns, then how each was trained. ``names`` maps model keys to printed names."""
    names = names or {}
    models = list(dict.fromkeys(s.model for s in scores))
    columns = list(dict.fromkeys(s.likelihood for s in scores))
    by_cell = {(s.model, s.likelihood): s for s in scores}
    first = next(iter(scores)).neg_elbo
    lines = [
        f"{title}: test split, {first.sequences} sequences ({first.steps} steps). "
        "-log p(x) in nats per sequence (summed over time and dimensions, averaged over sequences), lower is better, "
        "± one standard error over sequences. Without latent variables it is exact; with them, ≤ marks the "
        f"importance-weighted upper bound with K = {iw_samples} draws (per step, per block or per sequence, as the "
        "model's latents factorise over time: the last column below), and the -ELBO is in brackets.",
        "",
        "| model | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for m in models:
        cells = [cell(by_cell[m, c]) if (m, c) in by_cell else "" for c in columns]
        lines.append(f"| {names.get(m, m)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| model | likelihood | parameters | steps | training time (s) | stopped by | best validation at step "
        "| bound importance-weighted |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in scores:
        stop = "early stopping" if s.stopped_early else "time budget"
        lines.append(
            f"| {names.get(s.model, s.model)} | {s.likelihood} | {s.parameters:,} | {s.steps} | {s.seconds:.0f} | "
            f"{stop} | {s.best_step} | {s.iwae_over if s.neg_iwae else 'exact'} |"
        )
    return "\n".join(lines)


def write_comparison(
    scores: list[ComparisonRow], out: Path, title: str, iw_samples: int, names: dict[str, str] | None = None
) -> str:
    """``comparison.md`` (the tables), ``scores.json`` and ``validation.png`` (validation
    -ELBO against training time) in ``out``; returns the Markdown."""
    ordering = papers_ordering(scores, names)
    table = comparison_table(scores, title, iw_samples, names)
    if ordering:
        table += "\n\nPaper 1's ordering (lower is better):\n\n" + "\n".join(f"- {line}" for line in ordering)
    (out / "comparison.md").write_text(table + "\n")
    (out / "scores.json").write_text(json.dumps([dataclasses.asdict(s) for s in scores], indent=2))
    curves: dict[str, dict] = {}
    for s in scores:
        curves.setdefault(s.likelihood, {})[(names or {}).get(s.model, s.model)] = s.curve
    plot_validation_curves(curves, out / "validation.png")
    return table


def best_bound(score: ComparisonRow) -> float:
    """The tightest figure on -log p(x): the exact NLL, or the -IWAE bound."""
    return (score.neg_elbo if score.exact else score.neg_iwae).per_sequence


def papers_ordering(scores: list[ComparisonRow], names: dict[str, str] | None = None) -> list[str]:
    """Whether paper 1's ordering holds in each column, by :func:`best_bound`:
    STCN-dense beats STCN, and both beat Wavenet. Lines for the models present."""
    names = names or {}
    lines = []
    for column in dict.fromkeys(s.likelihood for s in scores):
        got = {s.model: best_bound(s) for s in scores if s.likelihood == column}
        claims = [("stcn-dense", "stcn"), ("stcn", "wavenet"), ("stcn-dense", "wavenet")]
        for better, worse in claims:
            if better in got and worse in got:
                verdict = "holds" if got[better] < got[worse] else "does NOT hold"
                lines.append(
                    f"{column}: {names.get(better, better)} ({got[better]:.2f}) beats {names.get(worse, worse)} "
                    f"({got[worse]:.2f}): {verdict}"
                )
    return lines
