"""``run.py compare``: one row per requested model, every figure from the test split."""

import json
import math

import pytest
import torch

from pyro_stcn import cli as run
from pyro_stcn import runs
from pyro_stcn.evaluation.bounds import evaluate_elbo, evaluate_iwae
from pyro_stcn.inference.factors import factor_steps_of


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "digits"
    argv = ["compare", "--budget", "0.02", "--models", "wavenet,vrnn,stcn", "--iw", "3", "--out", str(out)]
    run.main([*argv, "--no-progress", "--device", "cpu"])
    return out, argv


def _first_table(markdown: str) -> list[list[str]]:
    lines = markdown.splitlines()
    start = lines.index("| model | Bernoulli |")
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_one_row_per_requested_model(compared):
    out, _ = compared
    rows = _first_table((out / "comparison.md").read_text())
    assert [r[0] for r in rows] == ["Wavenet", "VRNN", "STCN"]
    assert rows[0][1].split(" ± ")[0].replace(".", "").isdigit()  # exact: a plain NLL
    assert rows[1][1].startswith("≤ ") and "(ELBO " in rows[1][1]  # a bound, with the ELBO beside it
    assert (out / "validation.png").stat().st_size > 0
    details = [line for line in (out / "comparison.md").read_text().splitlines() if " | Bernoulli | " in line]
    assert len(details) == 3 and all("| time budget |" in line for line in details)
    over = {line.split("|")[1].strip(): line.split("|")[-2].strip() for line in details}
    assert over == {"Wavenet": "exact", "VRNN": "per sequence", "STCN": "per step"}  # as each model factorises


def test_every_figure_is_computed_on_the_test_split(compared):
    out, _ = compared
    scores = json.loads((out / "scores.json").read_text())
    table = (out / "comparison.md").read_text()
    for score in scores:
        run_dir = out / f"{score['model']}-bernoulli"
        loaded = runs.load_run(str(run_dir), torch.device("cpu"))
        config, model, guide = loaded.config, loaded.model, loaded.guide
        test = runs.load_data(config).test
        elbo = evaluate_elbo(model.model, guide, test, seed=0)
        assert score["neg_elbo"]["sequences"] == len(test) == elbo.sequences
        assert math.isclose(score["neg_elbo"]["per_sequence"], elbo.per_sequence, rel_tol=1e-6)
        if score["model"] == "wavenet":
            assert score["neg_iwae"] is None and elbo.kl_per_sequence == {}
            assert f"{elbo.per_sequence:.2f} ± {elbo.stderr:.2f}" in table
        else:
            iwae = evaluate_iwae(model.model, guide, test, samples=3, seed=0, factor_steps=factor_steps_of(model))
            assert math.isclose(score["neg_iwae"]["per_sequence"], iwae.per_sequence, rel_tol=1e-6)
            assert f"≤ {iwae.per_sequence:.2f}" in table
        # each stopped on its time budget of 0.02 minutes, after a last validation
        seconds, _ = score["curve"]
        assert 1.2 <= seconds[-1] == score["seconds"] < 60


def test_a_rerun_resumes_without_training_again(compared, capsys):
    out, argv = compared
    before = json.loads((out / "scores.json").read_text())
    run.main([*argv, "--no-progress", "--device", "cpu"])
    printed = capsys.readouterr()
    assert printed.out.count("resuming") + printed.err.count("resuming") == 3
    after = json.loads((out / "scores.json").read_text())
    assert [s["steps"] for s in after] == [s["steps"] for s in before]
    assert [s["neg_elbo"] for s in after] == [s["neg_elbo"] for s in before]


def test_a_rerun_with_other_settings_is_refused(compared):
    out, argv = compared
    with pytest.raises(SystemExit, match="holds a run with other settings"):
        run.main([*argv, "--seed", "1", "--no-progress", "--device", "cpu"])


def test_bad_compare_flags_are_refused(capsys):
    with pytest.raises(SystemExit, match="--budget and --iw must be positive, got 0.0 minutes"):
        run.main(["compare", "--budget", "0"])
    with pytest.raises(SystemExit):
        run.main(["compare", "--budget", "1", "--models", "wavenet,srnn"])
    assert "unknown model 'srnn'; valid: wavenet, wavenet-dense" in capsys.readouterr().err


def test_a_comparison_directory_in_use_is_refused(tmp_path):
    from pyro_stcn.training.lock import RunLock

    with RunLock(tmp_path / "cmp"):
        with pytest.raises(SystemExit, match="cmp"):
            run.main(
                ["compare", "--budget", "0.01", "--models", "wavenet", "--out", str(tmp_path / "cmp"), "--no-progress"]
            )
    assert not (tmp_path / "cmp" / "wavenet-bernoulli").exists()  # refused before anything was written
