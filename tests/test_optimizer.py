"""The run's optimiser: a module's ``lr_scales`` give its submodules' parameters their
own learning rate (the IAF guides' flows at a tenth), every parameter in exactly one
group; runs saved with one group (before the flows had their own rate) resume as they
trained."""

import pyro

from pyro_stcn.data import load_digits_splits
from pyro_stcn.guides import IAFGuide
from pyro_stcn.inference.objectives import LayerwiseELBO
from pyro_stcn.models import STCNConfig
from pyro_stcn.runs.registry import make_guide, make_model
from pyro_stcn.training import TrainConfig, train
from pyro_stcn.training.checkpoint import load_checkpoint
from pyro_stcn.training.optimizer import param_groups

SMALL = STCNConfig(x_dim=1, channels=8, blocks=2, z_dims=[4, 2], hidden=8)


def test_the_flows_learn_at_a_tenth_and_every_parameter_is_in_one_group():
    model = make_model("stcn-dense", SMALL)
    guide = make_guide("iaf", model)
    groups = param_groups([model, guide], lr=2e-3)
    flow = {id(p) for p in guide.flow.parameters()}
    assert [g["lr"] for g in groups] == [2e-3, 2e-4]
    assert {id(p) for p in groups[1]["params"]} == flow
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted({id(p) for m in (model, guide) for p in m.parameters()})  # each once
    assert [g["lr"] for g in param_groups([model, make_guide("independent", model)], lr=2e-3)] == [2e-3]


def _train_iaf(run_dir, steps):
    pyro.set_rng_seed(0)
    model = make_model("stcn-dense", SMALL)
    guide = make_guide("iaf", model)
    config = TrainConfig(steps=steps, batch_size=16, lr=3e-3, valid_every=5)
    train(model.model, guide, {"model": model, "guide": guide}, LayerwiseELBO(), load_digits_splits(), config, run_dir)
    return load_checkpoint(run_dir / "last.pt")


def test_an_iaf_run_saved_with_one_group_resumes_with_one(tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(IAFGuide, "lr_scales", {})  # as IAF runs were saved before
        before = _train_iaf(tmp_path, steps=5)
    assert len(before["optimizer"]["param_groups"]) == 1
    after = _train_iaf(tmp_path, steps=10)  # resumed by this version
    assert after["train_state"]["step"] == 10 and len(after["optimizer"]["param_groups"]) == 1
    fresh = [g["lr"] for g in _train_iaf(tmp_path / "new", steps=5)["optimizer"]["param_groups"]]
    assert len(fresh) == 2 and abs(fresh[1] / fresh[0] - 0.1) < 1e-12  # a new run: the flows at a tenth
