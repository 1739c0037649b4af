"""The command line end to end, at toy size: train, evaluate, sample, and its errors."""

import json

import pytest
import torch

import run

TOY = ["--steps", "6", "--valid-every", "3", "--channels", "8", "--hidden", "8", "--z-dims", "4,2", "--blocks", "2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "toy"
    run.main(["train", *TOY, "--out", str(out), "--no-progress", "--device", "cpu"])
    return out


def test_train_writes_the_run_directory(trained):
    for name in ("config.json", "best.pt", "last.pt", "log.csv", "results.txt", "loss.png", "kl.png", "samples.png"):
        assert (trained / name).stat().st_size > 0, name
    config = json.loads((trained / "config.json").read_text())
    assert config["model"] == "stcn-dense" and config["guide"] == "ladder" and config["stcn"]["z_dims"] == [4, 2]
    results = (trained / "results.txt").read_text()
    assert "nats per sequence" in results and "independent-Bernoulli" in results


def test_evaluate_prints_elbo_and_layer_kl(trained, capsys):
    run.main(["evaluate", "--run", str(trained), "--device", "cpu"])
    out = capsys.readouterr().out
    assert "test split: -ELBO = " in out and "nats per step" in out
    assert "z_1" in out and "z_2" in out


def test_sample_writes_a_png(trained, tmp_path):
    path = tmp_path / "s.png"
    run.main(["sample", "--run", str(trained), "--num", "4", "--out", str(path), "--device", "cpu"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_existing_run_is_not_overwritten(trained):
    with pytest.raises(SystemExit, match="already holds a run; continue it with --resume"):
        run.main(["train", *TOY, "--out", str(trained), "--no-progress"])


@pytest.mark.parametrize(
    "flag,bad", [("--model", "wavenet"), ("--guide", "iaf"), ("--objective", "kl"), ("--prior", "x")]
)
def test_unknown_names_are_refused_with_the_valid_ones(flag, bad, capsys):
    with pytest.raises(SystemExit) as e:
        run.main(["train", flag, bad])
    assert e.value.code == 2
    assert f"invalid choice: '{bad}'" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(SystemExit, match="no CUDA device"):
        run.main(["evaluate", "--run", "nowhere", "--device", "cuda"])


def test_missing_run_directory(tmp_path, capsys):
    with pytest.raises(SystemExit, match=f"no checkpoint at {tmp_path}/best.pt"):
        run.main(["evaluate", "--run", str(tmp_path), "--device", "cpu"])
