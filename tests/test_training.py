"""Training: the README's SVI snippet, the shared trunk, checkpoints and resumption,
and a short run on real digits that beats an honest reference."""

import copy
import csv
import dataclasses
from pathlib import Path

import pyro
import pytest
import torch

from pyro_stcn import cli
from pyro_stcn.data import load_digits_splits, pad_batch
from pyro_stcn.evaluation.baselines import independent_bernoulli_nll
from pyro_stcn.evaluation.bounds import evaluate_elbo
from pyro_stcn.inference.objectives import AnnealedELBO, LayerwiseELBO
from pyro_stcn.models import STCNConfig
from pyro_stcn.runs.registry import make_guide, make_model
from pyro_stcn.training import CSVLog, TrainConfig, TrainState, train
from pyro_stcn.training.checkpoint import load_checkpoint
from pyro_stcn.training.optimizer import adam, load_adam_state

SMALL = STCNConfig(x_dim=1, likelihood="bernoulli", z_dims=[8, 4, 4, 2], channels=16, blocks=4, hidden=16)


@pytest.fixture(scope="module")
def digits():
    return load_digits_splits()


def _readme_python_blocks() -> list[str]:
    """The Python blocks of the "From Python" guide (docs/guides/python.md)."""
    text = (Path(__file__).parents[1] / "docs" / "guides" / "python.md").read_text()
    return [block.split("```")[0] for block in text.split("```python")[1:]]


def test_readme_svi_snippet_trains(digits, capsys, tmp_path, monkeypatch):
    """The README's Python blocks, executed as written."""
    namespace = {}
    train_block, check_block, baseline_block, run_block = _readme_python_blocks()
    exec(train_block, namespace)
    model, guide, losses = namespace["model"], namespace["guide"], namespace["losses"]
    assert len(losses) == 100
    assert sum(losses[-10:]) < 0.7 * sum(losses[:10])
    fresh = make_model("stcn-dense", namespace["config"])
    pyro.clear_param_store()
    untrained = evaluate_elbo(fresh.model, make_guide("ladder", fresh), digits.valid).per_sequence
    assert evaluate_elbo(model.model, guide, digits.valid).per_sequence < untrained - 5

    exec(check_block, namespace)
    bound, elbo = namespace["bound"], evaluate_elbo(model.model, guide, digits.test[:64]).per_sequence
    assert bound.sequences == 64 and bound.per_sequence < elbo + 0.1  # ≤ the -ELBO up to Monte Carlo error
    assert namespace["x_new"].shape == (8, 64, 1) and namespace["replicates"].shape == (10, 8, 64, 1)
    assert "pixel density: real" in capsys.readouterr().out

    exec(baseline_block, namespace)
    vrnn_losses = namespace["vrnn_losses"]
    assert len(vrnn_losses) == 30 and sum(vrnn_losses[-5:]) < 0.9 * sum(vrnn_losses[:5])

    # the run API block reads runs/default: a short run of the default model there
    monkeypatch.chdir(tmp_path)
    cli.main(["train", "--steps", "4", "--valid-every", "2", "--channels", "8", "--hidden", "8", "--z-dims", "4,2",
              "--blocks", "2", "--out", "runs/default", "--no-progress"])  # fmt: skip
    exec(run_block, namespace)
    run, scores = namespace["run"], namespace["scores"]
    again = evaluate_elbo(run.model.model, run.guide, run.data.test).per_sequence
    assert scores.neg_elbo.per_sequence == pytest.approx(again) and run.data.kind == "image"
    assert scores.neg_iwae.per_sequence <= scores.neg_elbo.per_sequence + 0.1  # the bound, up to Monte Carlo error
    assert f"{scores.neg_elbo.per_sequence}" in capsys.readouterr().out


def test_trunk_runs_once_per_step(digits):
    model = make_model("stcn-dense", SMALL)
    guide = make_guide("ladder", model)
    calls = []
    model.trunk.register_forward_hook(lambda *_: calls.append(1))
    svi = pyro.infer.SVI(model.model, guide, pyro.optim.Adam({"lr": 1e-3}), loss=LayerwiseELBO())
    x, mask = pad_batch(digits.train[:8])
    svi.step(x, mask)
    assert len(calls) == 1
    svi.step(x, mask)  # the same tensors again: a new step computes afresh
    assert len(calls) == 2
    with torch.no_grad():
        model.model(x, mask)  # the model alone computes its own
    assert len(calls) == 3


def test_stale_features_are_never_handed_over(digits):
    """A guide run, then an optimizer update (or an in-place edit of x), then the model:
    the model must compute the trunk afresh."""
    model = make_model("stcn-dense", SMALL)
    guide = make_guide("ladder", model)
    calls = []
    model.trunk.register_forward_hook(lambda *_: calls.append(1))
    x, mask = pad_batch(digits.train[:4])
    with torch.no_grad():
        guide(x, mask)
        model.trunk.groups[0][0].out.bias.add_(1.0)  # what an optimizer step does
        model.model(x, mask)
        assert len(calls) == 2
        guide(x, mask)
        x[0, 0] = 1 - x[0, 0]
        model.model(x, mask)
        assert len(calls) == 4
        guide(x, mask)
        model.model(x, mask)  # nothing changed: handed over
        assert len(calls) == 5


def _train(digits, run_dir, steps, **kw):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = make_model("stcn-dense", SMALL)
    guide = make_guide("ladder", model)
    schedules = kw.pop("schedules", None)
    config = TrainConfig(steps=steps, batch_size=32, lr=3e-3, valid_every=kw.pop("valid_every", 50), **kw)
    result = train(
        model.model,
        guide,
        {"model": model, "guide": guide},
        AnnealedELBO(),
        digits,
        config,
        run_dir,
        schedules=schedules,
        run_config={"note": "test"},
        callbacks=[CSVLog()],
    )
    return model, guide, result


def test_short_training_beats_independent_bernoulli(digits, tmp_path):
    model, guide, result = _train(digits, tmp_path, steps=300)
    test = evaluate_elbo(model.model, guide, digits.test)
    reference = independent_bernoulli_nll(digits.train, digits.test)
    assert test.per_sequence + 3 * test.stderr < reference, (test.per_sequence, reference)
    best = load_checkpoint(tmp_path / "best.pt")  # weights_only=True inside
    assert best["train_state"]["best_step"] == result.best_step
    assert best["run_config"] == {"note": "test"}
    assert set(best) >= {"model", "guide", "optimizer", "train_state"}


def test_interrupted_run_resumes_exactly(digits, tmp_path):
    """Killed at step 15, resumed from the step-10 checkpoint, a run ends with the same
    parameters as one that was never interrupted."""
    straight, _, _ = _train(digits, tmp_path / "straight", steps=30, valid_every=10)

    def interrupt_at_15(step):
        if step == 15:
            raise KeyboardInterrupt
        return 1.0

    with pytest.raises(KeyboardInterrupt):
        _train(digits, tmp_path / "resumed", steps=30, valid_every=10, schedules={"beta": interrupt_at_15})
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["train_state"]["step"] == 10
    resumed, _, result = _train(digits, tmp_path / "resumed", steps=30, valid_every=10)
    assert result.last_step == 30
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    with open(tmp_path / "resumed" / "log.csv") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f)]
    assert steps == list(range(1, 31))


def _assert_identical(a, b, where: str = "") -> None:
    """Bit for bit: tensors by torch.equal, containers element by element; a checkpoint's
    wall-clock ``seconds`` and its ``train_config`` (the steps asked for) are skipped."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a.keys() - {"seconds", "train_config"}:
            _assert_identical(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def _log_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "log.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_a_run_stopped_and_resumed_with_more_steps_matches_an_uninterrupted_one(digits, tmp_path):
    """Trained to step 10, then to 20, then to 30: parameters, optimizer, learning-rate
    schedule, random state, training state and every log row (as written, so bit for
    bit; only the wall-clock seconds differ) equal those of one run of 30 steps."""
    straight, straight_guide, _ = _train(digits, tmp_path / "straight", steps=30, valid_every=10)
    for steps in (10, 20, 30):
        resumed, resumed_guide, result = _train(digits, tmp_path / "resumed", steps=steps, valid_every=10)
        assert result.last_step == steps
    _assert_identical(straight.state_dict(), resumed.state_dict(), "model")
    _assert_identical(straight_guide.state_dict(), resumed_guide.state_dict(), "guide")
    for name in ("last.pt", "best.pt"):
        ckpts = [load_checkpoint(tmp_path / run / name) for run in ("straight", "resumed")]
        _assert_identical(*ckpts, name)
    rows = _log_rows(tmp_path / "straight")
    assert [int(row["step"]) for row in rows] == list(range(1, 31))
    assert [row["valid_loss"] != "" for row in rows] == [step % 10 == 0 for step in range(1, 31)]
    assert rows == _log_rows(tmp_path / "resumed")


def test_train_state_reads_back_from_a_checkpoint_dict():
    # the dict that checkpoints have held since before TrainState: the same keys
    saved = {"step": 40, "best_valid": 37.5, "best_step": 30, "patience_best": 38.0, "bad_validations": 1,
             "stopped_early": False, "seconds": 9.5}  # fmt: skip
    state = TrainState.from_dict(saved)
    assert (state.step, state.best_valid, state.best_step, state.patience_best) == (40, 37.5, 30, 38.0)
    assert (state.bad_validations, state.stopped_early, state.seconds) == (1, False, 9.5)
    assert dataclasses.asdict(state) == saved
    with pytest.raises(ValueError, match="train_state has keys.*expected"):
        TrainState.from_dict({k: v for k, v in saved.items() if k != "bad_validations"})


def test_patience_counts_validations_without_a_relative_improvement():
    state = TrainState()
    # to count as better, beat 100 by 1% (< 99), then 98.9 by 1% (< 97.911)
    for valid, bad in [(100.0, 0), (99.5, 1), (98.9, 0), (98.0, 1), (97.95, 2)]:
        assert not state.stopped_early
        state.count_patience(valid, min_improvement=0.01, patience=2)
        assert state.bad_validations == bad, valid
    assert state.patience_best == 98.9 and state.stopped_early


def test_early_stopping(digits, tmp_path):
    _, _, result = _train(digits, tmp_path, steps=400, valid_every=5, patience=2, min_improvement=0.5)
    with open(tmp_path / "log.csv") as f:
        valid = [(int(r["step"]), float(r["valid_loss"])) for r in csv.DictReader(f) if r["valid_loss"]]
    # replay the rule on the logged validations: stop at the 2nd without a 50% improvement
    target, bad = float("inf"), 0
    for step, loss in valid:  # noqa: B007 (step is read after the loop)
        target, bad = (loss, 0) if loss < target * 0.5 or target == float("inf") else (target, bad + 1)
        if bad == 2:
            break
    assert result.stopped_early and result.last_step == step < 400
    assert result.best_valid == min(loss for _, loss in valid)


def test_a_time_budget_stops_training_and_a_resumed_run_spends_only_the_rest(digits, tmp_path):
    _, _, first = _train(digits, tmp_path, steps=10**6, valid_every=10**6, budget=1.0)
    assert first.out_of_time and not first.stopped_early and 1.0 <= first.seconds < 30
    assert first.best_step == first.last_step  # a last validation when the time ran out
    _, _, again = _train(digits, tmp_path, steps=10**6, valid_every=10**6, budget=1.0)
    assert again.last_step == first.last_step  # nothing left of the budget: no step taken
    _, _, longer = _train(digits, tmp_path, steps=10**6, valid_every=10**6, budget=2.0)
    assert longer.out_of_time and longer.last_step > first.last_step and 2.0 <= longer.seconds < 30
    _, _, by_steps = _train(digits, tmp_path / "steps", steps=3, valid_every=10**6, budget=60.0)
    assert by_steps.last_step == 3 and not by_steps.out_of_time


def test_a_checkpoint_of_unfused_adam_resumes_fused_with_the_same_update():
    """A run saved before Adam ran fused resumes fused (``load_state_dict`` alone would
    copy the saved ``fused=None`` into every group), and its next update is the unfused
    one's to float rounding."""
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]

    def step(optimizer):
        optimizer.zero_grad()
        (weights[0].sin().sum() + weights[1].square().sum()).backward()
        optimizer.step()

    old = torch.optim.Adam(weights, lr=0.1)  # as runs trained before this version
    for _ in range(3):
        step(old)
    saved, start = copy.deepcopy(old.state_dict()), [w.detach().clone() for w in weights]
    step(old)
    unfused = [w.detach().clone() for w in weights]

    with torch.no_grad():
        for w, s in zip(weights, start):
            w.copy_(s)
    resumed, _ = adam([{"params": weights, "lr": 0.1}], 0.1, 1.0, 1)
    load_adam_state(resumed, saved)
    assert [g["fused"] for g in resumed.param_groups] == [True]
    assert all(resumed.state[w]["step"].dtype == torch.float32 for w in weights)
    step(resumed)
    for w, u in zip(weights, unfused):
        assert torch.allclose(w, u, rtol=1e-6, atol=1e-7)
