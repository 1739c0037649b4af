"""The "Extending pyro-stcn" guide's recipes (docs/guides/extending.md), run exactly as
printed, each in an empty directory: your own guide and prior train from the command line,
a model of your own, registered through the public registry without editing any project
file, trains, evaluates and samples through the command line, and a logger of your own
sees every step."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "extending.md"


def recipes() -> list[str]:
    return re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)


def run_recipe(code: str, directory: Path) -> str:
    (directory / "recipe.py").write_text(code)
    done = subprocess.run([sys.executable, "recipe.py"], cwd=directory, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_guide_has_four_recipes():
    assert len(recipes()) == 4


def test_your_own_guide_trains_from_the_command_line(tmp_path):
    printed = run_recipe(recipes()[0], tmp_path)
    config = json.loads((tmp_path / "runs/student-t/config.json").read_text())
    assert config["guide"] == "student-t" and "trained 100 steps" in printed
    kl_row = next(line for line in printed.splitlines() if line.startswith("| stcn-dense |"))
    assert float(kl_row.split("|")[-2]) > 0  # the Monte Carlo KL of the Student-t posterior was recorded


def test_your_own_prior_trains_from_the_command_line(tmp_path):
    printed = run_recipe(recipes()[1], tmp_path)
    config = json.loads((tmp_path / "runs/laplace/config.json").read_text())
    assert config["net"]["prior"] == "laplace" and "with the independent guide and the laplace prior" in printed
    assert "trained 100 steps" in printed


def test_your_own_model_trains_evaluates_and_samples_from_the_command_line(tmp_path):
    printed = run_recipe(recipes()[2], tmp_path)
    config = json.loads((tmp_path / "runs/markov/config.json").read_text())
    assert config["model"] == "markov" and config["net"]["hidden"] == 16 and config["guide"] == "none"
    test = re.search(r"markov on digits, test split: -ELBO = ([\d.]+)", printed)
    reference = re.search(r"independent-Bernoulli pixels .* NLL = ([\d.]+)", printed)
    assert test and reference and "exact negative log-likelihood" in printed
    assert 0 < float(test.group(1)) < 64 * 0.6932  # it learned: below a coin flip per pixel
    assert (tmp_path / "runs/markov/samples.png").stat().st_size > 0
    assert "wrote runs/markov/samples.png: 8 sequences of 64 steps" in printed


def test_your_own_logger_sees_every_step(tmp_path):
    printed = run_recipe(recipes()[3], tmp_path)
    assert "trained 50 steps" in printed
    rows = [json.loads(line) for line in (tmp_path / "runs/jsonl/steps.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 51))
    assert [row["step"] for row in rows if "valid_loss" in row] == [25, 50]
    with open(tmp_path / "runs/jsonl/log.csv", newline="") as f:  # the same figures as the run's own log
        logged = [float(row["loss"]) for row in csv.DictReader(f)]
    assert [row["loss"] for row in rows] == pytest.approx(logged, rel=1e-6)
