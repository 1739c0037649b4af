"""``--compile`` (pyro_stcn.nets.compiled): the compiled networks compute the same loss
and gradients as the uncompiled ones, to float32 rounding (relative 1e-5 of the loss,
1e-4 of each gradient's scale, as in tests/test_layout.py); a platform that cannot
compile trains uncompiled and says why."""

import copy

import pytest
import torch

from pyro_stcn.nets import compiled
from pyro_stcn.nets.compiled import compile_networks, compile_problem
from pyro_stcn.nets.trunk import GatedBlock
from pyro_stcn.runs.registry import make_guide, make_model
from tests.conftest import latents_of, loss_and_grads_at, ragged_batch, tiny_config


def _tiny():
    torch.manual_seed(0)
    model = make_model("stcn-dense", tiny_config(z_dims=[3], channels=4, blocks=1, hidden=4))
    return model, make_guide("ladder", model)


def _is_compiled(module: torch.nn.Module) -> bool:
    return module._compiled_call_impl is not None


def test_without_a_compiler_the_networks_run_uncompiled_and_the_reason_is_given(monkeypatch):
    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)
    problem = compile_problem("cpu")
    assert problem is not None and "C++ compiler" in problem
    model, guide = _tiny()
    with pytest.warns(RuntimeWarning, match="C\\+\\+ compiler.*uncompiled"):
        assert compile_networks(model, guide) == 0
    assert not any(_is_compiled(m) for m in model.modules())


@pytest.mark.skipif(compile_problem("cpu") is not None, reason=f"cannot compile here: {compile_problem('cpu')}")
def test_compiled_networks_give_the_same_loss_and_gradients():
    model, guide = _tiny()
    reference_model = copy.deepcopy(model)
    reference_guide = make_guide("ladder", reference_model)
    reference_guide.load_state_dict(guide.state_dict())
    x, mask = ragged_batch((9, 6))
    latents = latents_of(guide, x, mask)
    count = compile_networks(model, guide)
    blocks = [m for m in model.modules() if isinstance(m, GatedBlock)]
    assert count == len(blocks) + model.layers + len(guide.estimate) and all(_is_compiled(b) for b in blocks)
    loss, grads = loss_and_grads_at(model, guide, x, mask, latents)
    reference_loss, reference_grads = loss_and_grads_at(reference_model, reference_guide, x, mask, latents)
    assert torch.allclose(loss, reference_loss, rtol=1e-5)
    for g, r in zip(grads, reference_grads, strict=True):
        assert (g - r).abs().max() <= 1e-4 * r.abs().max().clamp_min(1.0)


def test_a_compile_run_compiles_its_networks_and_records_it(tmp_path, monkeypatch):
    """``--compile`` reaches the run's config and the training loop, which compiles the
    model's and guide's networks (recorded here, not compiled: that is the test above)."""
    from pyro_stcn import runs
    from pyro_stcn.cli import parser, settings_of
    from pyro_stcn.data import load_digits_splits
    from pyro_stcn.training import loop

    asked = []
    monkeypatch.setattr(loop, "compile_networks", lambda *modules, device: asked.append(modules) or 0)
    flags = "train --compile --steps 2 --valid-every 2 --channels 4 --hidden 4 --z-dims 2 --blocks 1".split()
    settings = settings_of(parser().parse_args(flags))
    run_config, data = runs.new_run_config(settings, data=load_digits_splits())
    assert run_config.train.compile is True
    model, guide = runs.start_run(run_config, tmp_path)
    runs.train_run(run_config, model, guide, data, tmp_path, callbacks=[])
    assert asked == [(model, guide)]
    assert '"compile": true' in (tmp_path / "config.json").read_text()
