"""Posterior predictive checks: test statistics of real sequences against replicated
ones, with posterior predictive p-values [1].

Two kinds of replicate of a batch of real sequences x, each of the real lengths:

- one-step-ahead: x^rep_t ~ p(x_t | x_{<t}, z_t) with z ~ q(z | x), the history being
  the real x. This is ``pyro.infer.Predictive`` with the trained guide over the model
  with its observation unconditioned (:func:`one_step_ahead`). The posterior q has seen
  x_t itself (in MS-STCN, x up to the end of the coarse block that holds t), so these
  are posterior reconstructions: a check of what the latents carry, not a forecast;
- free-running: whole sequences from the model's own sampler, x^rep ~ p(x).

For a statistic T, p = P(T(x^rep) >= T(x)) over the replicates. A p near 0 or 1 says
the model does not reproduce that feature of the data; near 0.5, it does.

References:
    - [1] Gelman, Meng & Stern, "Posterior predictive assessment of model fitness via
      realized discrepancies", Statistica Sinica, 1996.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.infer import Predictive
from torch import Tensor

from pyro_stcn.data.batching import pad_batch

Statistic = Callable[[Tensor, Tensor], Tensor]  # (x [batch, time, x_dim], mask [batch, time]) -> scalar


@torch.no_grad()
def one_step_ahead(model: Callable, guide: Callable, x: Tensor, mask: Tensor, replicates: int) -> Tensor:
    """``replicates`` one-step-ahead replicates of ``x [batch, time, x_dim]``:
    ``[replicates, batch, time, x_dim]``, site ``x`` of ``model(x, mask)`` drawn with
    the latents from ``guide(x, mask)``."""
    predictive = Predictive(poutine.uncondition(model), guide=guide, num_samples=replicates, return_sites=["x"])
    return predictive(x, mask)["x"][:, :, : x.shape[1]]  # a multiscale model pads the time axis


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values [batch, time, ...]`` over real steps."""
    weight = mask.reshape(*mask.shape, *[1] * (values.dim() - 2)).expand_as(values)
    return (values * weight).sum() / weight.sum()


def _signal(x: Tensor, mask: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """The values a statistic looks at, ``[batch, length, channels]`` with their mask:
    the pen offsets (dx, dy) for strokes; for audio the waveform, frames end to end;
    the values themselves otherwise."""
    if kind == "strokes":
        return x[..., :2], mask
    if kind == "audio":
        return x.reshape(len(x), -1, 1), mask.repeat_interleave(x.shape[-1], dim=1)
    return x, mask


def lag1_autocorrelation(x: Tensor, mask: Tensor) -> Tensor:
    """Σ (s_t - m)(s_{t+1} - m) / Σ (s_t - m)^2 over pairs of real consecutive steps,
    pooled over sequences and channels; m is the mean over real steps."""
    centred = x - _masked_mean(x, mask)
    pairs = mask[:, 1:] & mask[:, :-1]
    return _masked_mean(centred[:, 1:] * centred[:, :-1], pairs) / _masked_mean(centred**2, mask)


def statistics(kind: str) -> dict[str, Statistic]:
    """The test statistics for data of this kind (``Splits.kind``)."""

    def on_signal(stat: Statistic) -> Statistic:
        return lambda x, mask: stat(*_signal(x, mask, kind))

    if kind == "image":

        def density_variance(x: Tensor, mask: Tensor) -> Tensor:
            return ((x * mask[..., None]).sum((1, 2)) / mask.sum(1)).var()  # of each image's ink fraction

        return {
            "pixel density": _masked_mean,
            "variance of density across images": density_variance,
            "lag-1 autocorrelation": lag1_autocorrelation,
        }
    stats = {
        "mean": on_signal(_masked_mean),
        "variance": on_signal(lambda x, mask: _masked_mean((x - _masked_mean(x, mask)) ** 2, mask)),
        "lag-1 autocorrelation": on_signal(lag1_autocorrelation),
    }
    if kind == "strokes":
        stats["pen-up rate"] = lambda x, mask: _masked_mean(x[..., 2], mask)
        stats["mean stroke length (steps)"] = lambda x, mask: mask.sum() / (x[..., 2] * mask).sum().clamp(min=1)
    return stats


@dataclass
class CheckRow:
    statistic: str
    real: float
    replicated: dict[str, Tensor]  # kind -> T(x^rep) of each replicate
    p_value: dict[str, float]  # kind -> P(T(x^rep) >= T(x))


@torch.no_grad()
def posterior_predictive_check(
    model,
    guide: Callable,
    sequences: Sequence[Tensor],
    kind: str,
    replicates: int = 20,
    device: torch.device | str = "cpu",
) -> list[CheckRow]:
    """Each statistic of :func:`statistics` on ``sequences`` (real data, as one
    batch) against its one-step-ahead and free-running replicates. ``model`` is the
    model module: ``model.model`` the Pyro model, ``model.generate`` its sampler."""
    x, mask = (t.to(device) for t in pad_batch(sequences))
    reps = {
        "one-step-ahead": one_step_ahead(model.model, guide, x, mask, replicates),
        "free-running": torch.stack([model.generate(len(x), x.shape[1]) for _ in range(replicates)]),
    }
    rows = []
    for name, stat in statistics(kind).items():
        real = float(stat(x, mask))
        replicated = {kind: torch.stack([stat(r, mask) for r in rep]).cpu() for kind, rep in reps.items()}
        p = {kind: float((values >= real).double().mean()) for kind, values in replicated.items()}
        rows.append(CheckRow(name, real, replicated, p))
    return rows


def check_table(title: str, rows: list[CheckRow]) -> list[str]:
    """The checks as Markdown lines: each statistic's real value, and for each kind of
    replicate its mean ± sd and the p-value."""
    kinds = list(rows[0].p_value)
    lines = [
        title,
        "| statistic | real | " + " | ".join(f"{k} (mean ± sd) | p" for k in kinds) + " |",
        "|---|---|" + "---|---|" * len(kinds),
    ]
    for row in rows:
        cells = [
            f"{row.replicated[k].mean():.4g} ± {row.replicated[k].std():.2g} | {row.p_value[k]:.2f}" for k in kinds
        ]
        lines.append(f"| {row.statistic} | {row.real:.4g} | " + " | ".join(cells) + " |")
    return lines
