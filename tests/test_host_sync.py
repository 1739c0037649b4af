"""A training step reads the device once: the figures it logs and decides on, together.

Each read of a tensor's value into Python (``.item()``, ``.tolist()``, ``bool``, ...)
waits on a GPU for all the work queued before it; a step that reads once lets the host
queue the next step while the device runs this one.
"""

import tempfile
from pathlib import Path

import pyro
import pytest
import torch
from torch.overrides import TorchFunctionMode

from pyro_stcn.inference import make_objective
from pyro_stcn.runs.registry import make_guide, make_model
from pyro_stcn.training import TrainConfig, Trainer, TrainState, distributed
from tests.conftest import ragged_batch, tiny_config

# The Tensor methods that copy a value to the host (checked below to reach the mode).
READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")
OBJECTIVES = {"elbo": {}, "linear-free-bits": {"lam": 0.3}, "iwae": {"samples": 3}}


class HostReads(TorchFunctionMode):
    """The names of the reads made while active, except of the tensors in ``skip``."""

    def __init__(self, skip=()):
        super().__init__()
        self.skip, self.calls = skip, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in READS and not any(args[0] is t for t in self.skip):
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def test_every_read_reaches_the_counter():
    t = torch.tensor(1.0)
    with HostReads() as reads:
        t.item(), t.tolist(), bool(t), float(t), int(t), [0, 1][torch.tensor(1)], t.numpy()
    assert reads.calls == list(READS)


def _run(objective: str, device: str = "cpu") -> tuple[Trainer, tuple]:
    """A run of STCN-dense with the ladder guide on a ragged batch, its first step taken
    (which keeps Pyro's validation, and so reads the device)."""
    model = make_model("stcn-dense", tiny_config()).to(device)
    guide = make_guide("ladder", model).to(device)
    objective = make_objective(objective, **OBJECTIVES[objective])
    schedules = {"lam": lambda step: 0.3} if hasattr(objective, "lam") else {}  # set each step, on the host
    run = Trainer(model.model, guide, {"model": model, "guide": guide}, objective, TrainConfig(batch_size=3),
               Path(tempfile.mkdtemp()), schedules, torch.device(device), {})  # fmt: skip
    batch = tuple(t.to(device) for t in ragged_batch())
    run.step(TrainState(), batch)
    return run, batch


def _adam_steps(run: Trainer) -> list[torch.Tensor]:
    # Adam's step counters live on the CPU (torch keeps them there unless capturable):
    # reading them transfers nothing.
    return [state["step"] for state in run.optimizer.state.values()]


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_a_training_step_reads_the_device_once_and_logs_the_right_figures(objective):
    run, batch = _run(objective)
    state = TrainState(step=1)
    # the figures the step must log, computed the plain way: the same draws, read one by one
    with torch.random.fork_rng():
        loss = run.loss(*batch)
        expected_loss = loss.item()
        expected_kl = {name: float(value) / 3 for name, value in run.objective.kl.items()}
    with HostReads(skip=_adam_steps(run)) as reads:
        row = run.step(state, batch)
    assert reads.calls == ["tolist"]
    assert row["loss"] == expected_loss and row["skipped"] == 0
    assert set(expected_kl) == {"z_1", "z_2", "z_3"}
    for name, value in expected_kl.items():
        assert row[f"kl_{name}"] == pytest.approx(value, rel=1e-12)
    assert row["kl"] == pytest.approx(sum(expected_kl.values()), rel=1e-12)


def test_the_objective_keeps_each_layers_kl_on_the_device_as_a_detached_scalar():
    run, batch = _run("elbo")
    with HostReads() as reads, pyro.validation_enabled(False):  # validation's checks read the device
        loss = run.objective.differentiable_loss(run.model, run.guide, *batch)
    assert reads.calls == [] and loss.requires_grad
    for value in run.objective.kl.values():
        assert value.shape == () and not value.requires_grad and value.dtype == torch.float64


def test_the_first_step_keeps_pyros_validation():
    """Later steps skip the checks that read the device; the first still refuses bad input."""
    model = make_model("stcn-dense", tiny_config())
    guide = make_guide("ladder", model)
    run = Trainer(model.model, guide, {"model": model, "guide": guide}, make_objective("elbo"),
                  TrainConfig(batch_size=3), Path(tempfile.mkdtemp()), {}, torch.device("cpu"), {})  # fmt: skip
    x, mask = ragged_batch()
    mask[1, 1] = False  # a gap: sequences must be left-aligned
    with pytest.raises(ValueError, match="mask row 1 has a gap"):
        run.step(TrainState(), (x, mask))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_a_cuda_training_step_synchronises_only_to_log(objective, monkeypatch):
    """Loss, backward and clipping under ``set_sync_debug_mode("error")``: any
    synchronisation before the step's one transfer raises."""
    run, batch = _run(objective, "cuda")
    mean = distributed.mean

    def transfer(values):
        torch.cuda.set_sync_debug_mode(0)  # the step's one read, and the optimizer after it
        return mean(values)

    monkeypatch.setattr(distributed, "mean", transfer)
    torch.cuda.set_sync_debug_mode("error")
    try:
        row = run.step(TrainState(step=1), batch)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(torch.tensor(row["loss"])) and row["skipped"] == 0


def test_training_data_with_a_nan_is_refused_before_the_first_step(tmp_path):
    """Steps after the first skip validation's checks, so the trainer checks the whole
    training split once, up front, for data passed in from Python."""
    import dataclasses

    from pyro_stcn import runs
    from pyro_stcn.data import load_digits_splits

    digits = load_digits_splits()
    train = list(digits.train)
    train[1] = train[1].clone()
    train[1][3, 0] = float("nan")
    settings = {"steps": 2, "valid_every": 2, "channels": [8], "hidden": 8, "z_dims": [4, 2], "blocks": 2}
    run_config, data = runs.new_run_config(settings, data=dataclasses.replace(digits, train=train))
    model, guide = runs.start_run(run_config, tmp_path)
    with pytest.raises(ValueError, match=r"training sequence 1 holds NaN or infinite values \(step 3\)"):
        runs.train_run(run_config, model, guide, data, tmp_path, callbacks=[])
    assert not (tmp_path / "last.pt").exists()
