"""Figures of a run: training curves, per-layer KL, and image grids."""

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from pyro_stcn.inference.kl import bottom_first  # noqa: E402


def read_log(path: str | Path) -> dict[str, list[float]]:
    """The CSV log as columns; empty cells (no validation at that step) are dropped
    together with their step into ``valid_step``. An empty cell of another column (one
    that a migrated log's older rows lack, such as ``skipped``) reads as NaN."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    cols = {k: [float(r[k] or "nan") for r in rows] for k in rows[0] if k not in ("valid_loss", "seconds")}
    cols["valid_step"] = [float(r["step"]) for r in rows if r["valid_loss"]]
    cols["valid_seconds"] = [float(r["seconds"]) for r in rows if r["valid_loss"]]
    cols["valid_loss"] = [float(r["valid_loss"]) for r in rows if r["valid_loss"]]
    return cols


def _smooth(values: list[float], width: int) -> tuple[list[float], int]:
    """Moving average over ``width`` steps (fewer if the log is short)."""
    v = torch.tensor(values)
    width = max(1, min(width, len(v)))
    return torch.nn.functional.avg_pool1d(v[None, None], width, stride=1)[0, 0].tolist(), width


def plot_losses(log: dict[str, list[float]], path: str | Path, baseline: float | None = None) -> None:
    """Training -ELBO (moving average) and validation -ELBO against step."""
    fig, ax = plt.subplots(figsize=(6, 4))
    smooth, width = _smooth(log["loss"], 50)
    ax.plot(log["step"][width - 1 :], smooth, label=f"train (mean of {width} steps)")
    ax.plot(log["valid_step"], log["valid_loss"], "o-", label="validation")
    if baseline is not None:
        ax.axhline(baseline, color="gray", ls="--", label="independent-Bernoulli reference")
    ax.set(xlabel="step", ylabel="-ELBO (nats per sequence)", title="Loss")
    first_valid = log["valid_loss"][:1]
    if first_valid and first_valid[0] > 0:  # positive losses: the first steps would dwarf the rest
        ax.set_ylim(top=2 * max(first_valid + [baseline or 0]))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_validation_curves(curves: dict[str, dict[str, tuple[list[float], list[float]]]], path: str | Path) -> None:
    """Validation -ELBO against wall-clock seconds: one panel per column (likelihood),
    one line per model; ``curves[column][model] = (seconds, losses)``."""
    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
    for ax, (column, by_model) in zip(axes[0], curves.items()):
        lows = []
        for model, (seconds, losses) in by_model.items():
            ax.plot(seconds, losses, "o-", ms=3, label=model)
            lows.append(min(losses))
        # The first validations of a fresh model would dwarf the differences that matter.
        finals = [losses[-1] for _, losses in by_model.values()]
        spread = max(finals) - min(lows)
        ax.set_ylim(min(lows) - 0.1 * spread - 1e-6, max(finals) + 2 * spread + 1e-6)
        ax.set(xlabel="training time (s)", ylabel="validation -ELBO (nats per sequence)", title=column)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_layer_kl(log: dict[str, list[float]], path: str | Path) -> None:
    """KL of each latent layer (moving average) against step: a collapsed layer
    sits at zero."""
    fig, ax = plt.subplots(figsize=(6, 4))
    names = ["kl_" + n for n in bottom_first(k.removeprefix("kl_") for k in log if k.startswith("kl_"))]
    for name in names:
        smooth, width = _smooth(log[name], 50)
        ax.plot(log["step"][width - 1 :], smooth, label=name[3:])
    ax.set(xlabel="step", ylabel="KL (nats per sequence)", title="KL of each latent layer")
    if names:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no latent variables", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_kl_bars(kl: dict[str, float], title: str, path: str | Path) -> None:
    """KL of each latent layer as bars, bottom layer first: a collapsed layer has none."""
    names = bottom_first(kl)
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.5))
    bars = ax.bar(names, [kl[n] for n in names], color="tab:blue")
    ax.bar_label(bars, fmt="%.2f")
    ax.margins(y=0.15)  # room for the labels
    ax.set(ylabel="KL (nats per sequence)", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


PRIMED, GENERATED = "tab:gray", "tab:red"  # colours of given and generated steps


def plot_sequences(panels: dict[str, Tensor], kind: str, path: str | Path, primed: int = 0) -> None:
    """Sequences ``[n, steps, x_dim]`` drawn as their data's ``kind`` (``Splits.kind``):
    pen strokes, image grids (square images, one pixel per step), waveforms for audio,
    and heat maps of time against dimension for any other sequences. The first
    ``primed`` steps of every panel but ``real`` ones are drawn as given, the rest as
    generated."""
    steps, x_dim = next(iter(panels.values())).shape[1:]
    if kind == "strokes":
        plot_strokes(panels, path, primed)
    elif kind == "image" and x_dim == 1 and int(steps**0.5) ** 2 == steps:
        plot_image_grids(panels, int(steps**0.5), path, primed)
    elif kind == "audio":
        plot_waveforms(panels, path, primed)
    else:
        plot_heatmaps(panels, path, primed)


def _given(title: str, primed: int) -> int:
    return 0 if title.startswith("real") else primed


def plot_image_grids(panels: dict[str, Tensor], side: int, path: str | Path, primed: int = 0, cols: int = 8) -> None:
    """Side-by-side grids of images; each panel is ``[n, side * side]`` or
    ``[n, side * side, 1]`` in raster order, values in [0, 1]. Given (primed) pixels
    are drawn in blue."""
    rows = -(-max(len(images) for images in panels.values()) // cols)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2 * rows / cols + 0.5))
    for ax, (title, images) in zip(axes if len(panels) > 1 else [axes], panels.items()):
        ink = images.reshape(len(images), side * side).float().cpu()
        rgb = (1 - ink)[..., None].repeat(1, 1, 3)  # black ink on white
        given = _given(title, primed)
        rgb[:, :given] = torch.stack([1 - ink[:, :given]] * 2 + [torch.ones_like(ink[:, :given])], dim=-1)
        rgb = rgb.reshape(len(images), side, side, 3)
        canvas = torch.full((rows * (side + 1) + 1, cols * (side + 1) + 1, 3), 0.5)
        for i, img in enumerate(rgb):
            r, c = divmod(i, cols)
            canvas[1 + r * (side + 1) : (r + 1) * (side + 1), 1 + c * (side + 1) : (c + 1) * (side + 1)] = img
        ax.imshow(canvas.numpy(), interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_strokes(panels: dict[str, Tensor], path: str | Path, primed: int = 0) -> None:
    """Pen trajectories from ``[n, steps, 3]`` (dx, dy, pen) sequences: positions are the
    running sums of the offsets, and the line breaks where the pen bit says it lifts."""
    rows, cols = len(panels), max(len(v) for v in panels.values())
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
    for r, (title, seqs) in enumerate(panels.items()):
        given = _given(title, primed)
        for c, seq in enumerate(seqs.cpu()):
            ax = axes[r][c]
            xy = seq[:, :2].cumsum(0)
            ends = (seq[:, 2] > 0.5).nonzero().flatten().tolist()
            for start, end in zip([0] + [e + 1 for e in ends], ends + [len(seq) - 1]):
                if end < start:
                    continue
                if not given:
                    ax.plot(xy[start : end + 1, 0], xy[start : end + 1, 1], lw=1, color="k")
                    continue
                if start < given:  # the given part of this stroke
                    stop = min(end, given - 1) + 1
                    ax.plot(xy[start:stop, 0], xy[start:stop, 1], lw=1, color=PRIMED)
                if end >= given:  # the generated part, joined to the last given point
                    first = max(start, given - 1)
                    ax.plot(xy[first : end + 1, 0], xy[first : end + 1, 1], lw=1, color=GENERATED)
            ax.set_aspect("equal")
            ax.axis("off")
        axes[r][0].set_title(title, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _one_row_each(panels: dict[str, Tensor], path: str | Path, primed: int, xlabel: str, draw) -> None:
    """One row per sequence of every panel, labelled "title i"; ``draw(ax, seq, given,
    title)`` draws a sequence whose first ``given`` steps were given."""
    rows = sum(len(v) for v in panels.values())
    fig, axes = plt.subplots(rows, 1, figsize=(8, 0.9 * rows + 0.5), sharex=True, squeeze=False)
    row = 0
    for title, seqs in panels.items():
        for i, seq in enumerate(seqs.cpu()):
            draw(axes[row][0], seq, _given(title, primed), title)
            axes[row][0].set_yticks([])
            axes[row][0].set_ylabel(f"{title} {i}", rotation=0, ha="right", fontsize=7)
            row += 1
    axes[-1][0].set_xlabel(xlabel)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_heatmaps(panels: dict[str, Tensor], path: str | Path, primed: int = 0) -> None:
    """``[n, steps, x_dim]`` sequences as images of dimension (rows) against time
    (columns), as piano rolls are drawn; a vertical line ends the given steps."""

    def draw(ax, seq: Tensor, given: int, title: str) -> None:
        ax.imshow(seq.T.float().numpy(), aspect="auto", interpolation="nearest", cmap="Greys", origin="lower")
        if given:
            ax.axvline(given - 0.5, color=GENERATED, lw=1)

    _one_row_each(panels, path, primed, "step", draw)


def plot_waveforms(panels: dict[str, Tensor], path: str | Path, primed: int = 0) -> None:
    """``[n, steps, frame]`` audio as signals: frames of consecutive samples joined
    into one waveform."""

    def draw(ax, seq: Tensor, given: int, title: str) -> None:
        fw, wave = seq.shape[-1], seq.flatten()  # frames of consecutive samples, end to end
        at = torch.arange(len(wave))
        if given:
            ax.plot(at[: given * fw], wave[: given * fw], lw=0.5, color=PRIMED)
        colour = GENERATED if given or title.startswith("gen") else "tab:gray"
        ax.plot(at[given * fw :], wave[given * fw :], lw=0.5, color=colour)

    _one_row_each(panels, path, primed, "sample", draw)


def plot_ppc(rows: list, path: str | Path) -> None:
    """Posterior predictive checks: for each statistic (column) and kind of replicate
    (row), a histogram of T(x^rep) and a line at T(x), titled with the p-value."""
    kinds = list(rows[0].replicated)
    fig, axes = plt.subplots(len(kinds), len(rows), figsize=(3.2 * len(rows), 2.6 * len(kinds)), squeeze=False)
    for c, row in enumerate(rows):
        for r, kind in enumerate(kinds):
            ax = axes[r][c]
            ax.hist(row.replicated[kind].numpy(), bins=15, color="tab:blue", alpha=0.7, label="replicated")
            ax.axvline(row.real, color="tab:red", lw=2, label="real")
            ax.set_title(f"{row.statistic}\n{kind}: p = {row.p_value[kind]:.2f}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.locator_params(axis="x", nbins=4)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
