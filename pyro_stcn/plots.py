"""Figures of a run: training curves, per-layer KL, and image grids."""

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402


def read_log(path: str | Path) -> dict[str, list[float]]:
    """The CSV log as columns; empty cells (no validation at that step) are dropped
    together with their step into ``valid_step``."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    cols = {k: [float(r[k]) for r in rows] for k in rows[0] if k not in ("valid_loss", "seconds")}
    cols["valid_step"] = [float(r["step"]) for r in rows if r["valid_loss"]]
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


def plot_layer_kl(log: dict[str, list[float]], path: str | Path) -> None:
    """KL of each latent layer (moving average) against step: a collapsed layer
    sits at zero."""
    fig, ax = plt.subplots(figsize=(6, 4))
    names = sorted((k for k in log if k.startswith("kl_")), key=lambda k: int(k.split("_")[-1]))
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
    names = sorted(kl, key=lambda n: int(n.split("_")[1]))
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.5))
    bars = ax.bar(names, [kl[n] for n in names], color="tab:blue")
    ax.bar_label(bars, fmt="%.2f")
    ax.margins(y=0.15)  # room for the labels
    ax.set(ylabel="KL (nats per sequence)", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_image_grids(panels: dict[str, Tensor], side: int, path: str | Path, cols: int = 8) -> None:
    """Side-by-side grids of images; each panel is ``[n, side * side]`` or
    ``[n, side * side, 1]`` in raster order."""
    rows = -(-max(len(images) for images in panels.values()) // cols)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2 * rows / cols + 0.5))
    for ax, (title, images) in zip(axes if len(panels) > 1 else [axes], panels.items()):
        images = images.reshape(len(images), side, side).cpu()
        canvas = torch.ones(rows * (side + 1) + 1, cols * (side + 1) + 1) * 0.5
        for i, img in enumerate(images):
            r, c = divmod(i, cols)
            canvas[1 + r * (side + 1) : (r + 1) * (side + 1), 1 + c * (side + 1) : (c + 1) * (side + 1)] = img
        ax.imshow(canvas.numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_strokes(panels: dict[str, Tensor], path: str | Path) -> None:
    """Pen trajectories from ``[n, steps, 3]`` (dx, dy, pen) sequences: positions are the
    running sums of the offsets, and the line breaks where the pen bit says it lifts."""
    rows, cols = len(panels), max(len(v) for v in panels.values())
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
    for r, (title, seqs) in enumerate(panels.items()):
        for c, seq in enumerate(seqs.cpu()):
            ax = axes[r][c]
            xy = seq[:, :2].cumsum(0)
            ends = (seq[:, 2] > 0.5).nonzero().flatten().tolist()
            for start, end in zip([0] + [e + 1 for e in ends], ends + [len(seq) - 1]):
                if end >= start:
                    ax.plot(xy[start : end + 1, 0], xy[start : end + 1, 1], lw=1, color="k")
            ax.set_aspect("equal")
            ax.axis("off")
        axes[r][0].set_title(title, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_waveforms(panels: dict[str, Tensor], path: str | Path) -> None:
    """Speech from ``[n, steps, fw]`` frames of consecutive samples, as waveforms."""
    rows = sum(len(v) for v in panels.values())
    fig, axes = plt.subplots(rows, 1, figsize=(8, 0.9 * rows + 0.5), sharex=True, squeeze=False)
    row = 0
    for title, seqs in panels.items():
        for i, seq in enumerate(seqs.cpu()):
            ax = axes[row][0]
            ax.plot(seq.flatten(), lw=0.5, color="tab:blue" if title.startswith("gen") else "tab:gray")
            ax.set_yticks([])
            ax.set_ylabel(f"{title} {i}", rotation=0, ha="right", fontsize=7)
            row += 1
    axes[-1][0].set_xlabel("sample")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
