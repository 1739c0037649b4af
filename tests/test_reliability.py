"""Reliability (issue 15): nothing lost on preemption, divergence caught, one run per
directory, every bad input answered in one line with its exit code.

Preemption is tested on real processes: ``run.py train`` in a subprocess stopped by
SIGTERM (or SIGINT) during a step, or by ``kill -9`` while it writes ``last.pt``, then
resumed; its log and every tensor of its checkpoints must equal those of a run that
was never stopped, bit for bit. The faults (``tests/faults.py``) put a NaN, the signal
or the kill at an exact step, so the tests are deterministic. Nets are tiny, runs 6 steps."""

import csv
import errno
import json
import math
import os
import pickle
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import run
from pyro_stcn.evaluation.plots import read_log
from pyro_stcn.training import checkpoint
from pyro_stcn.training.callbacks import truncate_log
from pyro_stcn.training.checkpoint import load_checkpoint
from pyro_stcn.training.lock import RunLock
from tests.faults import injected

ROOT = Path(__file__).parents[1]
TOY = ["--steps", "6", "--valid-every", "3", "--channels", "8", "--hidden", "8", "--z-dims", "4,2", "--blocks", "2",
       "--valid-sequences", "20", "--batch-size", "16", "--no-progress", "--device", "cpu"]  # fmt: skip


def train_process(args: list[str], faults: str = "", terminal: bool = False) -> subprocess.CompletedProcess:
    """``run.py train ARGS`` in a fresh process (one thread, so that runs match bit for
    bit), with ``faults`` (tests/faults.py); with ``terminal``, in a terminal of its own
    that hangs up (:func:`in_a_terminal_that_hangs_up`)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, *(["run.py"] if not faults else ["tests/faults.py", faults]), "train", *args]
    if terminal:
        return in_a_terminal_that_hangs_up(command, env)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def in_a_terminal_that_hangs_up(command: list[str], env: dict) -> subprocess.CompletedProcess:
    """``command`` as a session's leader with a pseudo-terminal for its terminal (as a
    job in a login shell), which is closed once the command prints ``waiting for a
    hang-up`` (the ``hangup`` fault): the kernel sends the command SIGHUP, and its writes
    to the terminal fail from then on, as over a dropped connection. Its output up to
    then is the result's stdout."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: nothing of pytest's may run here
        try:
            os.chdir(ROOT)
            os.execve(command[0], command, env)
        finally:
            os._exit(127)
    output, deadline = b"", time.monotonic() + 300
    while b"waiting for a hang-up\r\n" not in output and time.monotonic() < deadline:  # the terminal's line end
        if select.select([fd], [], [], 1)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the command has ended
                chunk = b""
            if not chunk:
                break
            output += chunk
    os.close(fd)  # the hang-up
    while (ended := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    if ended[0] == 0:
        os.kill(pid, signal.SIGKILL)
        ended = os.waitpid(pid, 0)
    return subprocess.CompletedProcess(command, os.waitstatus_to_exitcode(ended[1]), output.decode(errors="replace"))


def log_rows(run_dir: Path) -> list[dict]:
    """The log's rows less the wall-clock seconds."""
    with open(run_dir / "log.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def assert_same_run(a: Path, b: Path) -> None:
    """Same log rows and, in best.pt and last.pt, the same tensors and training state, bit for bit."""
    assert log_rows(a) == log_rows(b)
    for name in ("best.pt", "last.pt"):
        ca, cb = load_checkpoint(a / name), load_checkpoint(b / name)
        for part in ("model", "guide"):
            assert ca[part].keys() == cb[part].keys()
            for key in ca[part]:
                assert torch.equal(ca[part][key], cb[part][key]), (name, part, key)
        for key, value in ca["optimizer"]["state"].items():
            for k, v in value.items():
                assert torch.equal(v, cb["optimizer"]["state"][key][k]), (name, "optimizer", key, k)
        assert torch.equal(ca["rng"], cb["rng"])
        assert {**ca["train_state"], "seconds": 0} == {**cb["train_state"], "seconds": 0}
        assert ca["guard"] == cb["guard"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run every stopped one is compared with."""
    out = tmp_path_factory.mktemp("straight") / "run"
    done = train_process([*TOY, "--out", str(out)])
    assert done.returncode == 0, done.stderr
    return out


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# -- preemption ---------------------------------------------------------------------


# One handler serves every signal: SIGUSR1 by default, the others with -m slow (the suite's time); a hang-up's
# SIGHUP is also tested below, from a terminal, by default.
SIGNALS = ["sigusr1", *(pytest.param(n, marks=pytest.mark.slow) for n in ("sigterm", "sigint", "sighup", "sigusr2"))]


@pytest.mark.parametrize("name", SIGNALS)
def test_a_signal_finishes_the_step_saves_last_pt_and_the_run_resumes_exactly(name, straight, tmp_path):
    """Each stop signal, sent as step 4 runs: exit 128 + the signal, the --resume command
    in one line, and the resumed run is the uninterrupted one bit for bit."""
    out = tmp_path / "run"
    done = train_process([*TOY, "--out", str(out)], faults=f"{name}@4")
    signum = getattr(signal, name.upper())
    assert done.returncode == 128 + signum, done.stderr
    line = one_line(done.stderr)
    assert line.startswith(f"stopped by {name.upper()}")
    assert f"after step 4; saved {out / 'last.pt'}: continue with  pyro-stcn train --resume {out}" in line
    assert_resumes_from_step_4(out, straight)


def assert_resumes_from_step_4(out: Path, straight: Path) -> None:
    """``out`` was stopped after step 4 and saved it; resumed, it becomes ``straight``."""
    assert load_checkpoint(out / "last.pt")["train_state"]["step"] == 4  # the step that was running, finished
    assert [int(r["step"]) for r in log_rows(out)] == [1, 2, 3, 4]
    assert not (out / ".lock").exists()
    resumed = train_process(["--resume", str(out), "--no-progress", "--device", "cpu"])
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {out} from step 4" in resumed.stdout
    assert_same_run(straight, out)


def test_a_terminal_that_hangs_up_stops_the_run_after_its_step_and_it_resumes_exactly(straight, tmp_path):
    """The terminal of ``train`` closes during step 4 (a dropped ssh session): SIGHUP, and
    nothing more can be printed; the run still saves step 4 and exits with 129."""
    out = tmp_path / "run"
    done = train_process([*TOY, "--out", str(out)], faults="hangup@4", terminal=True)
    assert "waiting for a hang-up" in done.stdout, done.stdout
    assert done.returncode == 128 + signal.SIGHUP, done.stdout
    assert_resumes_from_step_4(out, straight)


@pytest.mark.parametrize("step", [3, pytest.param(1, marks=pytest.mark.slow)])
def test_kill_9_while_last_pt_is_written_loses_nothing(step, straight, tmp_path):
    """Killed after the temporary file is complete but before it replaces last.pt (at
    step 1: before any last.pt exists, and the resumed run says so)."""
    out = tmp_path / "run"
    done = train_process([*TOY, "--out", str(out)], faults=f"kill-in-checkpoint@{step}")
    assert done.returncode == -signal.SIGKILL
    assert (out / "last.pt.tmp").exists()  # the write that was cut short
    assert [int(r["step"]) for r in log_rows(out)] == list(range(1, step + 1))  # flushed before last.pt
    resumed = train_process(["--resume", str(out), "--no-progress", "--device", "cpu"])
    assert resumed.returncode == 0, resumed.stderr
    if step == 1:
        assert f"{out} has no last.pt (it stopped before its first step ended): training it from step 0" in (
            resumed.stdout
        )
    else:
        assert f"resuming {out} from step 1" in resumed.stdout  # the first step's last.pt
    assert not list(out.glob("*.tmp"))
    assert_same_run(straight, out)


HEADER = "step,loss,kl,lr,valid_loss,seconds,skipped,kl_z_1"  # this version's log, one latent layer


def test_a_torn_log_row_is_dropped_on_resumption(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text(f"{HEADER}\r\n1,2.5,1,0.1,,,0,1\r\n2,2.4,1,0.1,2.6,3.5,0,1\r\n3,2.")  # a crash in row 3
    truncate_log(log, 2)
    assert log.read_bytes() == f"{HEADER}\r\n1,2.5,1,0.1,,,0,1\r\n2,2.4,1,0.1,2.6,3.5,0,1\r\n".encode()
    truncate_log(log, 0)  # no checkpoint: no row survives
    assert log.read_text() == ""


def test_a_log_of_the_version_before_skipped_steps_is_migrated(tmp_path):
    """The header before issue 15 lacked ``skipped`` (git log -p of the CSV log): its rows
    get the column, empty, and keep every value they had."""
    log = tmp_path / "log.csv"
    log.write_text("step,loss,kl,lr,valid_loss,seconds,kl_z_1\r\n1,2.5,1,0.1,,,1\r\n2,2.4,1,0.1,2.6,3.5,1\r\n")
    truncate_log(log, 2)
    assert log.read_bytes() == f"{HEADER}\r\n1,2.5,1,0.1,,,,1\r\n2,2.4,1,0.1,2.6,3.5,,1\r\n".encode()
    assert all(math.isnan(value) for value in read_log(log)["skipped"])  # what the plots read: no value


def test_a_full_disk_is_one_line_leaves_no_tmp_and_the_resume_says_there_was_no_checkpoint(tmp_path, monkeypatch,
                                                                                             capsys):  # fmt: skip
    out = tmp_path / "run"

    def full_disk(state, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(checkpoint.torch, "save", full_disk)
        with pytest.raises(SystemExit, match="No space left on device") as e:
            run.main(["train", *TOY, "--out", str(out)])
    assert e.value.code == 1
    assert one_line(capsys.readouterr().err).startswith("error: [Errno 28] No space left on device")
    assert not list(out.glob("*.tmp")) and not (out / "last.pt").exists()
    assert [int(r["step"]) for r in log_rows(out)] == [1]  # flushed before the write that failed
    run.main(["train", "--resume", str(out), "--no-progress", "--device", "cpu"])
    assert f"{out} has no last.pt" in capsys.readouterr().out
    assert [int(r["step"]) for r in log_rows(out)] == list(range(1, 7))  # step 1 once


# -- divergence ---------------------------------------------------------------------


def _train_library(run_dir: Path, steps: int, digits, faults: str = "") -> None:
    from pyro_stcn import runs

    settings = {"steps": steps, "valid_every": 50, "channels": [8], "hidden": 8, "z_dims": [4, 2], "blocks": 2,
                "batch_size": 16, "valid_sequences": 20}  # fmt: skip
    run_config, data = runs.new_run_config(settings, data=digits)
    model, guide = runs.start_run(run_config, run_dir)
    with injected(faults) as injection:
        runs.train_run(run_config, model, guide, data, run_dir, callbacks=[injection])


@pytest.fixture(scope="module")
def digits():
    from pyro_stcn.data import load_digits_splits

    return load_digits_splits()


def test_a_nan_step_is_skipped_with_no_update_and_counted(digits, tmp_path, monkeypatch):
    """A NaN loss at step 2 leaves parameters and optimizer as step 1 left them."""
    _train_library(tmp_path / "one", 1, digits)
    _train_library(tmp_path / "nan", 2, digits, faults="nan@2")
    one, nan = (load_checkpoint(tmp_path / name / "last.pt") for name in ("one", "nan"))
    for part in ("model", "guide"):
        for key, value in one[part].items():
            assert torch.equal(value, nan[part][key]), (part, key)
    for key, value in one["optimizer"]["state"].items():
        for k, v in value.items():  # Adam's moments and its step count: untouched
            assert torch.equal(v, nan["optimizer"]["state"][key][k]), (key, k)
    rows = log_rows(tmp_path / "nan")
    assert [r["skipped"] for r in rows] == ["0", "1"] and rows[1]["loss"] == "nan"
    assert nan["guard"] == {"skipped": 1, "in_a_row": 1} and nan["train_state"]["step"] == 2


def test_nan_steps_in_a_row_stop_the_run_naming_the_causes_and_keep_the_good_checkpoint(tmp_path, monkeypatch,
                                                                                        capsys):  # fmt: skip
    out = tmp_path / "run"
    with injected(",".join(f"nan@{s}" for s in range(2, 7))), pytest.raises(SystemExit) as e:
        run.main(["train", *TOY, "--steps", "10", "--valid-every", "10", "--out", str(out)])
    assert e.value.code == 1
    line = one_line(capsys.readouterr().err)
    assert "training diverged: the loss or gradient norm was not finite at 5 steps in a row (steps 2 to 6)" in line
    assert "a learning rate too high for this model (lr 0.002, --lr)" in line and "data far from unit scale" in line
    assert f"The last good checkpoint is kept: {out / 'last.pt'} (step 1)" in line
    assert load_checkpoint(out / "last.pt")["train_state"]["step"] == 1
    assert [r["skipped"] for r in log_rows(out)] == ["0", "1", "2", "3", "4", "5"]


def test_an_exploding_validation_is_reported_as_such_not_as_a_result(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        run.main(["train", *TOY, "--lr", "10", "--out", str(out)])
    assert e.value.code == 1
    captured = capsys.readouterr()
    line = one_line(captured.err)
    assert "training diverged: the validation -ELBO at step 3 exploded to" in line and "--lr" in line
    assert "test:" not in captured.out and not (out / "best.pt").exists()
    assert load_checkpoint(out / "last.pt")["train_state"]["step"] == 1


def test_data_finite_as_float64_but_not_as_float32_is_refused(tmp_path, capsys):
    path = tmp_path / "huge.npz"
    np.savez(path, data=np.full((9, 2), 1e300), lengths=[3, 3, 3])
    with pytest.raises(SystemExit) as e:
        run.main(["train", "--data", "npz", "--data-dir", str(path), "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    assert f"{path}, array 'data': NaN or inf at index (0, 0) as float32, the models' dtype (1e+300 there; 18 such" in (
        one_line(capsys.readouterr().err)
    )
    assert not (tmp_path / "out").exists()


# -- one run per directory ----------------------------------------------------------


def test_a_second_process_is_refused_and_a_dead_ones_lock_is_taken(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pyro_stcn.training.lock import RunLock; "
         "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)", str(out)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit) as e:
            run.main(["train", *TOY, "--out", str(out)])
        assert e.value.code == 2
        line = one_line(capsys.readouterr().err)
        assert f"error: {out} is in use by process {holder.pid} on " in line and "one run per directory" in line
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # the refused run wrote nothing
    finally:
        holder.kill()
        holder.wait()
    assert (out / ".lock").exists()  # left by the killed process: stale
    run.main(["train", *TOY, "--out", str(out)])
    assert (out / "last.pt").exists() and not (out / ".lock").exists()  # released on exit


@pytest.mark.slow
def test_two_training_processes_on_one_directory(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "run.py", "train", *TOY, "--steps", "200", "--out", str(out)]
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (out / "last.pt").exists():
        assert first.poll() is None
        time.sleep(0.2)
    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 2 and f"{out} is in use by process {first.pid}" in second.stderr
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=300) == 128 + signal.SIGTERM


def test_the_lock_is_exclusive_within_a_process_too(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(ValueError, match=f"{tmp_path} is in use by process {os.getpid()}"):
            RunLock(tmp_path).acquire()
    with RunLock(tmp_path):  # released: free again
        pass


# -- the run's files, checked before they are trusted ----------------------------------


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(run_dir, out)
    return out


def contents(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run directory, by name (a lock left behind included)."""
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir())}


def refused(argv: list[str], capsys) -> tuple[str, str]:
    """The one error line of a command refused with exit code 2, and what it printed before."""
    with pytest.raises(SystemExit) as e:
        run.main(argv)
    captured = capsys.readouterr()
    assert e.value.code == 2, captured
    return one_line(captured.err), captured.out


RESUME = ["train", "--resume"]


def test_a_log_with_a_foreign_header_is_refused_before_anything_is_trained_or_written(straight, tmp_path, capsys):
    out = copy_of(straight, tmp_path)
    (out / "log.csv").write_text("x,y,z\n1,2,3\n")
    before = contents(out)
    line, printed = refused([*RESUME, str(out), "--steps", "8", "--no-progress", "--device", "cpu"], capsys)
    assert "resuming" not in printed  # refused before the weights were even loaded
    assert line.startswith(f"error: {out / 'log.csv'} has the header 'x,y,z'; expected a pyro-stcn log, whose "
                           "header is step,loss,kl,lr,valid_loss,seconds,skipped then kl_NAME for each latent layer")
    assert contents(out) == before  # the log, both checkpoints, config.json (its new --steps not written)


def test_a_log_of_other_latent_layers_gets_no_row_and_the_checkpoint_stays(straight, tmp_path, capsys):
    """A log with this version's header but another model's KL columns: refused at the
    first row, which is not written, nor is last.pt."""
    out = copy_of(straight, tmp_path)
    with open(out / "log.csv", newline="") as f:
        rows = [row[:-1] for row in csv.reader(f)]  # no kl_z_2: a model with one latent layer
    with open(out / "log.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    before = {name: data for name, data in contents(out).items() if name != "config.json"}
    line, _ = refused([*RESUME, str(out), "--steps", "8", "--no-progress", "--device", "cpu"], capsys)
    assert line == (f"error: {out / 'log.csv'} has the columns step,loss,kl,lr,valid_loss,seconds,skipped,kl_z_1, but "
                    "this run logs step,loss,kl,lr,valid_loss,seconds,skipped,kl_z_1,kl_z_2 (another model's log?); "
                    "nothing was written to it: move it aside to resume with a new log")  # fmt: skip
    assert {name: data for name, data in contents(out).items() if name != "config.json"} == before


def test_a_log_of_the_version_before_skipped_steps_is_migrated_when_the_run_resumes(straight, tmp_path):
    out = copy_of(straight, tmp_path)
    old = [{k: v for k, v in row.items() if k != "skipped"} for row in csv.DictReader(open(out / "log.csv"))]
    with open(out / "log.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(old[0]))
        writer.writeheader()
        writer.writerows(old)
    run.main([*RESUME, str(out), "--steps", "7", "--no-progress", "--device", "cpu"])  # and plots the log
    with open(out / "log.csv", newline="") as f:
        new = list(csv.DictReader(f))
    assert list(new[0]) == ["step", "loss", "kl", "lr", "valid_loss", "seconds", "skipped", "kl_z_1", "kl_z_2"]
    assert [{k: v for k, v in row.items() if k != "skipped"} for row in new[:6]] == old
    assert [row["skipped"] for row in new] == [""] * 6 + ["0"]


@pytest.mark.parametrize("setting,value,message", [
    ("hidden", 16, "net.hidden is 16 there and 8 in last.pt"),
    ("lr", 0.01, "train.lr is 0.01 there and 0.002 in last.pt"),
])  # fmt: skip
def test_a_config_json_that_disagrees_with_the_checkpoint_is_refused(setting, value, message, straight, tmp_path,
                                                                     capsys):  # fmt: skip
    out = copy_of(straight, tmp_path)
    config = json.loads((out / "config.json").read_text())
    config["net" if setting == "hidden" else "train"][setting] = value
    (out / "config.json").write_text(json.dumps(config))
    before = contents(out)
    line, printed = refused([*RESUME, str(out), "--steps", "8", "--no-progress", "--device", "cpu"], capsys)
    assert "resuming" not in printed
    held = "weights" if setting == "hidden" else "optimizer's state"
    assert line == (f"error: {out / 'config.json'} disagrees with {out / 'last.pt'} on what the checkpoint holds "
                    f"({held}): {message}; model, guide, net, train.lr must be the checkpoint's: put them back, or "
                    "train a new run in another --out")  # fmt: skip
    assert contents(out) == before


def test_config_json_wins_for_the_other_settings_and_says_so(straight, tmp_path, capsys):
    out = copy_of(straight, tmp_path)
    config = json.loads((out / "config.json").read_text())
    config["train"]["valid_every"] = 7
    (out / "config.json").write_text(json.dumps(config))
    run.main([*RESUME, str(out), "--steps", "7", "--no-progress", "--device", "cpu"])
    assert (f"{out / 'config.json'} differs from {out / 'last.pt'}'s own config: train.valid_every is 7 there and 3 "
            "in last.pt; config.json wins, the run trains on with it") in capsys.readouterr().out  # fmt: skip
    assert [row["valid_loss"] != "" for row in log_rows(out)] == [False, False, True, False, False, True, True]


# -- bad inputs: one line naming what was wrong, exit code 2, nothing written --------


def _npz_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    cases = {}
    np.savez(tmp_path / "strings.npz", data=np.array(["a", "b", "c"] * 3), lengths=[3, 3, 3])
    cases["strings"] = (tmp_path / "strings.npz", "'data' has dtype <U1; expected numbers")
    np.savez(tmp_path / "float-lengths.npz", data=np.zeros((9, 2)), lengths=np.array([3.0, 3.0, 3.0]))
    cases["float lengths"] = (tmp_path / "float-lengths.npz", "'lengths' has dtype float64; expected integers")
    objects = np.empty(2, dtype=object)
    objects[:] = [np.zeros(3), np.zeros(2)]
    np.savez(tmp_path / "objects.npz", data=objects, lengths=[3, 2])
    cases["objects"] = (tmp_path / "objects.npz", "not an npz of numeric arrays (it holds pickled Python objects")
    (tmp_path / "random.npz").write_bytes(np.random.default_rng(0).bytes(300))
    cases["random bytes"] = (tmp_path / "random.npz", "not an npz of numeric arrays")
    return cases


@pytest.mark.parametrize("case", ["strings", "float lengths", "objects", "random bytes"])
def test_a_bad_npz_is_named(case, tmp_path, capsys):
    path, message = _npz_cases(tmp_path)[case]
    with pytest.raises(SystemExit) as e:
        run.main(["train", "--data", "npz", "--data-dir", str(path), "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"error: {path}: ") and message in line and "allow_pickle" not in line
    assert not (tmp_path / "out").exists()


def test_a_corrupt_gzipped_idx_is_named(tmp_path):
    from pyro_stcn.data.errors import DataError
    from pyro_stcn.data.idx import read_idx

    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match=f"{path}: cannot be read .*; expected an IDX file, gzipped"):
        read_idx(path)


@pytest.mark.parametrize("flags,message", [
    (["--batch-size", "0"], "--batch-size: batch_size must be positive, got 0"),
    (["--batch-size", "-3"], "--batch-size: batch_size must be positive, got -3"),
    (["--lr", "0"], "--lr: the learning rate must be a positive number, got 0"),
    (["--lr-decay", "-1"], "--lr-decay: the learning rate's factor every 1000 steps must be in (0, 1], got -1"),
    (["--checkpoint-every", "0"], "--checkpoint-every: expected a positive number of minutes, got 0"),
    (["--seed", "-1"], "--seed: expected a whole number from 0 to 2**32 - 1, got -1"),
    (["--lam", "-1"], "--lam: expected nats per latent dimension, 0 or more, got -1"),
    (["--lam-half-life", "0"], "--lam-half-life: expected a positive number of steps, got 0"),
    (["--beta-rate", "-1"], "--beta-rate: expected a positive number (β's rise per step), got -1"),
    (["--data", "speech", "--fw", "0"], "--fw: expected a positive number of samples per step, got 0"),
])  # fmt: skip
def test_bad_training_flags_are_named_before_anything_is_written(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run.main(["train", *TOY, *flags, "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    assert one_line(capsys.readouterr().err) == f"error: {message}"
    assert not (tmp_path / "out").exists()


def test_an_out_that_cannot_be_a_directory_is_named(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("")
    under = f"--out {file / 'sub'}: {file} is a file, so nothing can be written under it"
    for out, message in [(file, f"--out {file} is a file; expected a directory"), (file / "sub", under)]:
        with pytest.raises(SystemExit) as e:
            run.main(["train", *TOY, "--out", str(out)])
        assert e.value.code == 2 and one_line(capsys.readouterr().err).startswith(f"error: {message}")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_out_is_named(tmp_path, capsys):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(SystemExit, match="is not writable by this user") as e:
            run.main(["train", *TOY, "--out", str(tmp_path / "run")])
        assert e.value.code == 2
    finally:
        tmp_path.chmod(0o755)


@pytest.mark.parametrize("flags,message", [
    (["--steps", "0"], "--steps 0: expected at least 1 step to generate"),
    (["--steps", "-5"], "--steps -5: expected at least 1 step to generate"),
    (["--num", "-3"], "--num -3: expected at least 1 sequence"),
    (["--num", "0"], "--num 0: expected at least 1 sequence"),
    (["--prime", "-5"], "--prime -5: expected a number of given steps, 0 or more"),
    (["--steps", "100000000"], "--num 32 --steps 100000000: 32 sequences × 100000000 steps × 1 values = "
                               "3,200,000,000 values to generate; expected at most 100,000,000"),
    (["--out", "{run}"], "--out {run} is a directory; expected a file path"),
    (["--out", "{run}/samples"], "--out {run}/samples: expected a file name ending in .png"),
])  # fmt: skip
def test_bad_sample_flags_are_named_before_anything_is_generated(flags, message, straight, capsys):
    flags = [f.format(run=straight) for f in flags]
    before = sorted(p.name for p in straight.iterdir())
    with pytest.raises(SystemExit) as e:
        run.main(["sample", "--run", str(straight), *flags])
    assert e.value.code == 2
    assert one_line(capsys.readouterr().err).startswith(f"error: {message.format(run=straight)}")
    assert sorted(p.name for p in straight.iterdir()) == before


@pytest.mark.parametrize("command,flags,message", [
    ("evaluate", ["--seed", "-1"], "--seed: expected a whole number from 0 to 2**32 - 1, got -1"),
    ("sample", ["--seed", "4294967296"], "--seed: expected a whole number from 0 to 2**32 - 1, got 4294967296"),
    ("reconstruct", ["--num", "0"], "--num 0: expected at least 1 sequence"),
    ("ppc", ["--replicates", "0"], "--replicates 0: expected at least 1 replicate of each sequence"),
])  # fmt: skip
def test_bad_numbers_of_the_run_commands_are_named(command, flags, message, straight, capsys):
    before = contents(straight)
    line, _ = refused([command, "--run", str(straight), *flags, "--device", "cpu"], capsys)
    assert line == f"error: {message}"
    assert contents(straight) == before


def test_a_run_before_its_first_validation_says_so_and_offers_last_pt(tmp_path, capsys):
    out = tmp_path / "run"
    with injected("sigterm@2"), pytest.raises(SystemExit):  # stopped at step 2; it validates first at step 3
        run.main(["train", *TOY, "--out", str(out)])
    capsys.readouterr()
    for command in ("evaluate", "sample", "ppc"):
        line, _ = refused([command, "--run", str(out), "--device", "cpu"], capsys)
        assert line == (f"error: no checkpoint at {out / 'best.pt'}: {out} has trained 2 steps and has not reached its "
                        "first validation (step 3), which writes best.pt; give --checkpoint last.pt for the weights "
                        "of step 2")  # fmt: skip
    run.main(["evaluate", "--run", str(out), "--checkpoint", "last.pt", "--device", "cpu", "--no-progress"])
    assert "stcn-dense on digits, test split (last.pt): -ELBO = " in capsys.readouterr().out


def test_resume_with_fewer_steps_than_trained_is_refused_and_config_json_kept(straight, capsys):
    config = (straight / "config.json").read_text()
    with pytest.raises(SystemExit) as e:
        run.main(["train", "--resume", str(straight), "--steps", "3"])
    assert e.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert line == f"error: --steps 3: {straight} has trained 6 steps; give a larger total to train on"
    assert (straight / "config.json").read_text() == config


def test_a_corrupt_config_json_is_named(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SystemExit) as e:
        run.main(["train", "--resume", str(tmp_path)])
    assert e.value.code == 2
    assert one_line(capsys.readouterr().err).startswith(f"error: {tmp_path / 'config.json'} is not valid JSON")


class Malicious:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_pickle_in_a_checkpoint_is_refused_in_one_line_without_the_unsafe_hint(tmp_path, capsys):
    with open(tmp_path / "best.pt", "wb") as f:
        pickle.dump({"model": Malicious()}, f)
    with pytest.raises(SystemExit) as e:
        run.main(["evaluate", "--run", str(tmp_path), "--device", "cpu"])
    assert e.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert f"{tmp_path / 'best.pt'} is not a pyro-stcn checkpoint: it holds Python objects" in line
    assert "weights_only=False" not in line and "pwned" not in line


@pytest.mark.parametrize("argv,message", [
    (["--steps", "0"], "--steps: expected positive integers, got '0'"),
    (["generation", "--repeats", "0"], "--repeats: expected a positive integer, got '0'"),
    (["steps", "--gen-steps", "-1"], "--gen-steps: expected a positive integer, got '-1'"),
])  # fmt: skip
def test_bench_refuses_counts_that_are_not_positive(argv, message, capsys):
    from pyro_stcn import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["bench", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err
