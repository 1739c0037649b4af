"""Many processes (torchrun, gloo, CPU): two processes train the single-process run,
resume exactly, with the same or another number of processes, and only rank 0 writes.

Each torchrun is launched with ``--standalone`` (a free port of its own) and
``OMP_NUM_THREADS=1``; the nets are tiny and the runs a few steps long."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch

from pyro_stcn import cli, runs
from pyro_stcn.training.checkpoint import load_checkpoint

ROOT = Path(__file__).parents[1]
TINY = ["--valid-sequences", "20", "--batch-size", "8", "--hidden", "8", "--no-progress"]
WAVENET = ["--model", "wavenet", "--channels", "8", "--layers", "2", "--blocks", "2", *TINY]
STCN = ["--model", "stcn-dense", "--channels", "8", "--blocks", "2", "--z-dims", "4,2,2,2", *TINY]


def torchrun(args: list[str], processes: int = 2, faults: str = "") -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=N run.py train ARGS`` from the repository
    root, with ``faults`` (tests/faults.py)."""
    script = ["run.py"] if not faults else ["tests/faults.py", faults]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               *script, "train", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def train_two(args: list[str]) -> str:
    done = torchrun(args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def train_one(args: list[str]) -> None:
    cli.main(["train", *args])


def log_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def modules_of(run_dir: Path) -> dict:
    ckpt = load_checkpoint(run_dir / "last.pt")
    return {f"{part}.{k}": v for part in ("model", "guide") for k, v in ckpt[part].items()}


@pytest.fixture(scope="module")
def wavenet_runs(tmp_path_factory):
    """A Wavenet (no latent draws) trained 8 steps by one process and by two, and one
    trained 4 steps by two processes then resumed by one to step 8."""
    out = tmp_path_factory.mktemp("wavenet")
    steps = ["--steps", "8", "--valid-every", "4"]
    train_one([*WAVENET, *steps, "--out", str(out / "one")])
    stdout = train_two([*WAVENET, *steps, "--out", str(out / "two")])
    train_two([*WAVENET, "--steps", "4", "--valid-every", "4", "--out", str(out / "two-then-one")])
    train_one(["--resume", str(out / "two-then-one"), "--steps", "8", "--no-progress"])
    return out, stdout


def test_two_processes_train_the_parameters_of_one(wavenet_runs):
    """Same seed and global batch: the parameters after 8 steps, and the logged loss and
    validation (rank 0's log holds the mean over ranks), match to float tolerance."""
    out, _ = wavenet_runs
    one, two = modules_of(out / "one"), modules_of(out / "two")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6, msg=name)
    rows_one, rows_two = log_rows(out / "one"), log_rows(out / "two")
    assert [r["step"] for r in rows_two] == [str(s) for s in range(1, 9)]
    for a, b in zip(rows_one, rows_two):
        for key in ("loss", "lr") + (("valid_loss",) if a["valid_loss"] else ()):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-5), (a["step"], key)
    # not trivially equal: training moved the weights away from the seed's initial ones
    run_config = runs.RunConfig.from_dict(json.loads((out / "one" / "config.json").read_text()))
    pyro.set_rng_seed(run_config.train.seed)
    initial, _ = runs.build(run_config)
    assert any((one[f"model.{k}"] - v).abs().max() > 1e-4 for k, v in initial.state_dict().items())


def test_a_run_of_two_processes_resumes_with_one(wavenet_runs):
    """Stopped at step 4 by two processes and resumed by one: it ends where the
    single-process run does (no latent draws, so to float tolerance)."""
    out, _ = wavenet_runs
    one, resumed = modules_of(out / "one"), modules_of(out / "two-then-one")
    for name in one:
        torch.testing.assert_close(resumed[name], one[name], rtol=1e-5, atol=1e-6, msg=name)
    assert [r["step"] for r in log_rows(out / "two-then-one")] == [str(s) for s in range(1, 9)]


def test_only_rank_zero_writes_and_prints(wavenet_runs):
    """Two processes leave the files one process leaves, each log row once (both ranks
    appending would double them), and print each line once."""
    out, stdout = wavenet_runs
    assert sorted(p.name for p in (out / "two").iterdir()) == sorted(p.name for p in (out / "one").iterdir())
    assert [r["step"] for r in log_rows(out / "two")] == [str(s) for s in range(1, 9)]
    for line in ("training wavenet", "trained 8 steps", "test: -ELBO", "wrote "):
        assert stdout.count(line) == 1, (line, stdout)
    assert "(2 processes)" in stdout


def test_a_latent_run_of_two_processes_stopped_and_resumed_matches_an_uninterrupted_one(tmp_path):
    """STCN-dense (posterior noise drawn per rank from (seed, step, rank)): stopped at
    step 3 and resumed to step 6 by two processes, bit for bit the run of 6 steps, and
    only rank 0 wrote TensorBoard events."""
    steps = ["--valid-every", "3", "--tensorboard"]
    train_two([*STCN, *steps, "--steps", "6", "--out", str(tmp_path / "straight")])
    train_two([*STCN, *steps, "--steps", "3", "--out", str(tmp_path / "resumed")])
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["train_state"]["step"] == 3
    train_two(["--resume", str(tmp_path / "resumed"), "--steps", "6", "--no-progress", "--tensorboard"])
    straight, resumed = (load_checkpoint(tmp_path / run / "last.pt") for run in ("straight", "resumed"))
    for part in ("model", "guide"):
        for name, value in straight[part].items():
            assert torch.equal(resumed[part][name], value), (part, name)
    assert straight["optimizer"]["state"].keys() == resumed["optimizer"]["state"].keys()
    for key, value in straight["optimizer"]["state"].items():
        assert torch.equal(resumed["optimizer"]["state"][key]["exp_avg"], value["exp_avg"]), key
    drop = {"seconds"}
    rows = [[{k: v for k, v in r.items() if k not in drop} for r in log_rows(tmp_path / run)]
            for run in ("straight", "resumed")]  # fmt: skip
    assert rows[0] == rows[1] and len(rows[0]) == 6
    assert len(list((tmp_path / "straight").glob("events.out.tfevents.*"))) == 1
    assert len(list((tmp_path / "resumed").glob("events.out.tfevents.*"))) == 2  # one per launch, rank 0's


def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    """SIGUSR1 to rank 1 alone as step 2 ends (a signal that reached one node): rank 0
    stops after step 2 too, saves it and says so once. (Which rank's exit torchrun then
    reports depends on which ends first: rank 1 may be aborted by its process group as
    rank 0 leaves, so the test does not read torchrun's summary.)"""
    out = tmp_path / "run"
    done = torchrun([*WAVENET, "--steps", "6", "--valid-every", "6", "--out", str(out)], faults="sigusr1@2:1")
    assert done.stderr.count(f"stopped by SIGUSR1 after step 2; saved {out / 'last.pt'}") == 1, done.stderr
    assert load_checkpoint(out / "last.pt")["train_state"]["step"] == 2
    assert [r["step"] for r in log_rows(out)] == ["1", "2"]


def test_a_batch_that_does_not_split_evenly_is_refused(tmp_path):
    done = torchrun([*WAVENET, "--batch-size", "7", "--steps", "2", "--out", str(tmp_path / "run")])
    assert done.returncode != 0
    assert "--batch-size 7 does not split evenly across 2 processes" in done.stderr + done.stdout
