"""Held-out negative ELBO, per sequence and per step, the KL of each layer, and
importance-weighted bounds.

For one posterior draw z ~ q(z | x) per sequence n,

    -ELBO_n = -Σ_t log p(x_t | z_t) + Σ_l Σ_t KL(q(z^l_t | ·) || p(z^l_t | ·))

with masked steps excluded. Reported: the mean of -ELBO_n over sequences (nats per
sequence, as both papers' tables), its standard error, and the total over all real
steps divided by their number (nats per step).

The importance-weighted bounds (Burda et al. 2016) draw K samples either of the whole
sequence or, where the model's latents factorise over blocks of steps given x
(:mod:`pyro_stcn.inference.factors`), of each block on its own:

    Σ_f log (1/K) Σ_k w_{k,f}  ≤  log p(x),

far tighter than K draws of the whole sequence on long sequences.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor

from pyro_stcn.data.batching import batches
from pyro_stcn.inference.factors import factor_label, trace_log_weights
from pyro_stcn.inference.kl import bottom_first, layer_of, unit_kl


def trace_pair(model: Callable, guide: Callable, x: Tensor, mask: Tensor):
    """(guide trace, model trace replayed against it) for one draw z ~ q(z | x), with
    plate sites pruned and log densities computed."""
    guide_trace = prune_subsample_sites(poutine.trace(guide).get_trace(x, mask))
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, mask)
    model_trace = prune_subsample_sites(model_trace)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    return guide_trace, model_trace


def _samples(trace):
    return [(name, site) for name, site in trace.nodes.items() if site["type"] == "sample"]


def sequence_terms(model: Callable, guide: Callable, x: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """log p(x | z) and the KL of each latent layer (``elbo.layer_of``), per sequence
    (``[batch]`` each), for one draw from the guide. The KL is analytic where torch has
    a rule, else the Monte Carlo log q(z) - log p(z) of that draw (``elbo.unit_kl``)."""
    guide_trace, model_trace = trace_pair(model, guide, x, mask)
    log_lik = sum(site["log_prob"].sum(-1) for _, site in _samples(model_trace) if site["is_observed"])
    kl = {}
    for name, site in _samples(model_trace):
        if not site["is_observed"]:
            layer = layer_of(site)
            kl[layer] = kl.get(layer, 0.0) + unit_kl(guide_trace.nodes[name], site).flatten(1).sum(-1)
    return log_lik, kl


def factor_log_weights(model: Callable, guide: Callable, x: Tensor, mask: Tensor, factor_steps: int | None) -> Tensor:
    """log p(x_f, z_f | x_{<f}) - log q(z_f | x) of each factor f of ``factor_steps``
    steps (:func:`pyro_stcn.inference.factors.trace_log_weights`), ``[batch, F]``, for one draw
    z ~ q(z | x); with ``factor_steps`` None, one factor: the whole sequence."""
    guide_trace, model_trace = trace_pair(model, guide, x, mask)
    return trace_log_weights(model_trace, guide_trace, factor_steps)


def log_weights(model: Callable, guide: Callable, x: Tensor, mask: Tensor) -> Tensor:
    """log p(x, z) - log q(z | x) per sequence ``[batch]``, summed over time, for one
    draw z ~ q(z | x)."""
    return factor_log_weights(model, guide, x, mask, None)[:, 0]


@torch.no_grad()
def iwae_bound(
    model: Callable, guide: Callable, x: Tensor, mask: Tensor, samples: int, chunk: int = 1
) -> tuple[Tensor, Tensor]:
    """The importance-weighted bound log (1/K) Σ_k w_k ≤ log p(x) per sequence, with
    its K log weights ``[K, batch]`` (Burda et al. 2016). The mean of the log weights
    is a Monte Carlo estimate of the ELBO, and the bound is at least that, by Jensen.

    The K draws are made ``chunk`` at a time, by tiling the batch ``chunk`` times in one
    pass: memory grows with ``chunk``, not with K."""
    log_w = []
    for start in range(0, samples, chunk):
        n = min(chunk, samples - start)
        tiled = log_weights(model, guide, x.repeat(n, 1, 1), mask.repeat(n, 1))  # draw-major: [n * batch]
        log_w.append(tiled.reshape(n, len(x)))
    log_w = torch.cat(log_w)
    return log_w.logsumexp(0) - math.log(samples), log_w


@torch.no_grad()
def factorised_iwae_bound(
    model: Callable, guide: Callable, x: Tensor, mask: Tensor, samples: int, factor_steps: int | None,
    chunk: int = 1,
) -> Tensor:  # fmt: skip
    """The importance-weighted bound with K = ``samples`` draws of each factor,

        Σ_f log (1/K) Σ_k w_{k,f}  ≤  log p(x)      per sequence ``[batch]``,

    over factors of ``factor_steps`` steps (the model's ``factor_steps``; None: the
    whole sequence, the bound of :func:`iwae_bound`). Steps past a sequence's end
    weigh 1 in every draw and add 0. The draws are made ``chunk`` at a time, each
    factor keeping a running log Σ_k w_{k,f}: memory grows with ``chunk``, not K."""
    if samples < 1 or chunk < 1:
        raise ValueError(f"samples and chunk must be positive, got {samples} and {chunk}")
    total = None
    for start in range(0, samples, chunk):
        n = min(chunk, samples - start)
        log_w = factor_log_weights(model, guide, x.repeat(n, 1, 1), mask.repeat(n, 1), factor_steps)
        log_w = log_w.reshape(n, len(x), -1).logsumexp(0)  # draw-major tiling: [n * batch, F] -> [batch, F]
        total = log_w if total is None else torch.logaddexp(total, log_w)
    return (total - math.log(samples)).sum(-1)


@dataclass
class BoundReport:
    """A bound on -log p(x) over a set of sequences, in nats."""

    per_sequence: float
    stderr: float  # standard error of ``per_sequence`` over sequences
    per_step: float
    sequences: int
    steps: int

    @classmethod
    def of(cls, per_sequence: Tensor, steps: int) -> "BoundReport":
        """From the bound of each sequence ``[n]`` and their total number of steps."""
        per_seq, n = per_sequence.double(), len(per_sequence)
        stderr = float(per_seq.std() / math.sqrt(n)) if n > 1 else float("nan")
        return cls(float(per_seq.mean()), stderr, float(per_seq.sum() / steps), n, steps)


@torch.no_grad()
def evaluate_iwae(
    model: Callable,
    guide: Callable,
    sequences: Sequence[Tensor],
    samples: int,
    chunk: int = 10,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    factor_steps: int | None = None,
) -> BoundReport:
    """-IWAE bound with K = ``samples`` draws per sequence, or per factor of
    ``factor_steps`` steps where given (:func:`factorised_iwae_bound`); up to
    ``batch_size · chunk`` sequences go through the networks at once. ``progress`` is
    called with the number of sequences done after each batch."""
    device = torch.device(device)
    bounds, steps = [], 0
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for x, mask in batches(sequences, batch_size):
            x, mask = x.to(device), mask.to(device)
            bounds.append(-factorised_iwae_bound(model, guide, x, mask, samples, factor_steps, chunk).cpu())
            steps += int(mask.sum())
            if progress is not None:
                progress(len(x))
    return BoundReport.of(torch.cat(bounds), steps)


@dataclass
class ElboReport:
    """Negative ELBO on a set of sequences, in nats."""

    per_sequence: float
    stderr: float  # standard error of ``per_sequence`` over sequences
    per_step: float
    kl_per_sequence: dict[str, float]  # by latent layer, e.g. {"z_1": ...}
    sequences: int
    steps: int


@torch.no_grad()
def evaluate_elbo(
    model: Callable,
    guide: Callable,
    sequences: Sequence[Tensor],
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int | None = 0,
) -> ElboReport:
    """-ELBO of ``sequences`` with one posterior draw per sequence.

    A fixed ``seed`` reuses the same random draws at every call (common random
    numbers), so that successive validations differ only by the parameters; the
    caller's random state is left as it was.
    """
    device = torch.device(device)
    neg_elbo, kls, steps = [], {}, 0
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        for x, mask in batches(sequences, batch_size):
            x, mask = x.to(device), mask.to(device)
            log_lik, kl = sequence_terms(model, guide, x, mask)
            neg_elbo.append(sum(kl.values(), -log_lik).cpu())
            for name, value in kl.items():
                kls.setdefault(name, []).append(value.cpu())
            steps += int(mask.sum())
    bound = BoundReport.of(torch.cat(neg_elbo), steps)
    return ElboReport(
        per_sequence=bound.per_sequence,
        stderr=bound.stderr,
        per_step=bound.per_step,
        kl_per_sequence={name: float(torch.cat(v).double().mean()) for name, v in sorted(kls.items())},
        sequences=bound.sequences,
        steps=steps,
    )


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


@dataclass
class Scores:
    """Figures of a model on a set of sequences: the -ELBO with the KL of each layer (the
    exact -log p(x) without latents) and, where asked for and the model has latents, the
    -IWAE bound, importance-weighted ``iwae_over`` ("per step", "per block of 8 steps" or
    "per sequence")."""

    neg_elbo: ElboReport
    neg_iwae: BoundReport | None = None
    iwae_over: str | None = None


def score(
    model: Callable, guide: Callable, sequences: Sequence[Tensor], iw: int | None = None, chunk: int = 10,
    device: torch.device | str = "cpu", seed: int = 0, progress: Callable[[int], None] | None = None,
    factor_steps: int | None = None,
) -> Scores:  # fmt: skip
    """The one scoring of the library (the command line, ``compare`` and the run API): the
    -ELBO of ``sequences`` and, with ``iw`` K, the -IWAE bound from K draws (``chunk`` at a
    time) of each factor of ``factor_steps`` steps (None: whole sequences), for a model
    with latents (without, its -ELBO is exact already); ``progress`` is called with
    sequences done."""
    neg_elbo = evaluate_elbo(model, guide, sequences, device=device, seed=seed)
    if not iw or not neg_elbo.kl_per_sequence:
        return Scores(neg_elbo)
    bound = evaluate_iwae(model, guide, sequences, iw, chunk, device=device, seed=seed, progress=progress,
                          factor_steps=factor_steps)  # fmt: skip
    return Scores(neg_elbo, bound, factor_label(factor_steps))
