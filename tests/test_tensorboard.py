"""TensorBoard: a short run with --tensorboard writes the log's scalars, β, the
validation and a sample figure, without changing what it trains; asked for without
the package, a clear error."""

import csv
import importlib.util

import pytest
import torch

from pyro_stcn import cli
from pyro_stcn.training.checkpoint import load_checkpoint

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

RUN = ["--model", "stcn-dense", "--channels", "8", "--blocks", "2", "--hidden", "8", "--z-dims", "4,2,2,2",
       "--objective", "annealed", "--steps", "4", "--valid-every", "2", "--valid-sequences", "20",
       "--batch-size", "8", "--no-progress"]  # fmt: skip


def test_tensorboard_writes_the_logged_scalars_and_changes_nothing(tmp_path):
    cli.main(["train", *RUN, "--tensorboard", "--out", str(tmp_path / "board")])
    cli.main(["train", *RUN, "--out", str(tmp_path / "plain")])
    (events,) = (tmp_path / "board").glob("events.out.tfevents.*")
    board = EventAccumulator(str(events), size_guidance={"scalars": 0, "images": 0})
    board.Reload()
    tags = set(board.Tags()["scalars"])
    layers = [f"z_{i}" for i in range(1, 5)]
    assert {"train/loss", "train/kl", "train/lr", "train/beta", "valid/loss"} <= tags
    assert {f"train/kl_{z}" for z in layers} | {f"valid/kl_{z}" for z in layers} <= tags
    with open(tmp_path / "board" / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for key in ("loss", "kl", *(f"kl_{z}" for z in layers)):  # the CSV's values, step by step
        written = [(e.step, e.value) for e in board.Scalars(f"train/{key}")]
        assert written == [(int(r["step"]), pytest.approx(float(r[key]), rel=1e-6)) for r in rows], key
    assert [e.step for e in board.Scalars("valid/loss")] == [2, 4]
    assert [e.value for e in board.Scalars("train/beta")] == pytest.approx([1e-4 * s for s in range(4)])
    assert [e.step for e in board.Images("samples")] == [2, 4]
    # the sample figure draws on a forked random state: training is the run without TensorBoard
    board_ckpt, plain_ckpt = (load_checkpoint(tmp_path / run / "last.pt") for run in ("board", "plain"))
    for name, value in plain_ckpt["model"].items():
        assert torch.equal(board_ckpt["model"][name], value), name


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path, monkeypatch, capsys):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else
                        find_spec(name, *a))  # fmt: skip
    with pytest.raises(SystemExit, match="--tensorboard needs the tensorboard package"):
        cli.main(["train", *RUN, "--tensorboard", "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run" / "last.pt").exists()
