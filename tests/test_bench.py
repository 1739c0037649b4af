"""The benchmark's yardstick and its command: the hand-written losses compute what the
Pyro objectives compute, so the printed ratios compare like with like."""

import dataclasses
import sys

import pytest
import torch

import run
from pyro_stcn.bench import authors
from pyro_stcn.bench.handwritten import ms_stcn_independent_loss, stcn_ladder_loss
from pyro_stcn.inference.objectives import LayerwiseELBO, LinearFreeBitsELBO
from pyro_stcn.models import MS_STCN_LAYOUTS, STCNConfig
from pyro_stcn.runs.registry import make_guide, make_model


def handwriting_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 12, 3, generator=g)
    x[..., 2] = (torch.rand(3, 12, generator=g) < 0.3).float()
    mask = torch.arange(12) < torch.tensor([12, 7, 3])[:, None]
    return x * mask[..., None], mask


def stcn_dense():
    config = STCNConfig(x_dim=3, likelihood="handwriting", components=3, channels=8, blocks=2, z_dims=[4, 3, 2],
                        hidden=8)  # fmt: skip
    model = make_model("stcn-dense", config)
    return model, make_guide("ladder", model), LayerwiseELBO(), stcn_ladder_loss


def ms_stcn():
    config = dataclasses.replace(MS_STCN_LAYOUTS["iamondb"], channels=[8] * 5, z_dims=[3, 3, 2, 2, 2])
    model = make_model("ms-stcn", config)
    return model, make_guide("independent", model), LinearFreeBitsELBO(lam=0.5), ms_stcn_independent_loss


@pytest.mark.parametrize("build", [stcn_dense, ms_stcn], ids=["stcn-dense-ladder", "ms-stcn-independent"])
def test_hand_written_loss_matches_the_pyro_objective(build):
    model, guide, objective, reference = build()
    x, mask = handwriting_batch()
    params = [*model.parameters(), *guide.parameters()]
    torch.manual_seed(1)
    pyro_loss = objective.differentiable_loss(model.model, guide, x, mask)
    pyro_grads = torch.autograd.grad(pyro_loss, params, allow_unused=True)
    torch.manual_seed(1)  # the same draws
    value, surrogate = reference(model, guide, objective, x, mask)
    grads = torch.autograd.grad(surrogate, params, allow_unused=True)
    assert value.item() == pytest.approx(pyro_loss.item(), rel=1e-6)
    if isinstance(objective, LinearFreeBitsELBO):  # some units below λ: the surrogate is not the value
        assert abs(surrogate.item() - value.item()) > 1e-3
    for a, b in zip(pyro_grads, grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_bench_all_quick_prints_every_ratio(capsys):
    run.main(["bench", "all", "--quick", "--repeats", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line.split("|") for line in out.splitlines() if line.startswith("| STCN")}
    assert rows, out
    steps = next(line for line in out.splitlines() if line.startswith("| MS-STCN | 2 × 64"))
    assert float(steps.split("|")[5]) > 0  # Pyro / hand-written
    scaling = [line.split("|") for line in out.splitlines() if line.startswith("| MS-STCN |") and "×" not in line]
    assert [int(r[2]) for r in scaling] == [16, 32, 64] and float(scaling[0][4]) == 1.0
    generation = [line.split("|") for line in out.splitlines() if line.startswith("| 1 |") or line.startswith("| 4 |")]
    assert len(generation) == 2 and all(float(r[2]) > 0 and float(r[5]) > 0 for r in generation)


# -- bench authors, against a stand-in for the authors' checkout ----------------------------

# The files of carl-andersson/MS-STCN that the bench imports, with the names and signatures it
# calls, around a one-layer network: the authors' code is not needed to test the command.
# Model imports inside __init__, as theirs does, so building must happen while "model" is theirs.
STAND_IN = {
    "default_options.py": """
default_model_options_iamondb = {
    "vae_options": {
        "default_ar_layer": {"latent_size": 8, "size_multiplier": 2, "stride": 1,
                             "inf_pre_options": {"dilation": (1, 1, 1, 1)}},
        "ar_layers_options": [{}, {"stride": 2}, {"stride": 2}, {"latent_size": 4, "stride": 2},
                              {"latent_size": 2, "inf_pre_options": {"dilation": (1, 2, 4, 8)}}],
    },
    "pred_options": {"type": "combination", "sub_dists": [{"type": "bernoulli", "output_size": 1},
                                                           {"type": "normal", "output_size": 2}]},
}
default_options = {
    "iamondb_options": {"seq_len_train": 1024},
    "seed": 1234, "optimizer": "Adam", "Adam_options": {"eps": 1e-8}, "ll_normalization": "", "ind_latentstate": False,
    "model_options": {"vae_options": None, "pred_options": None},  # Blizzard's, in theirs
    "train_options": {
        "init_lr": 5e-4, "batch_size": 128, "grad_clip": 10000, "grad_clip_norm": 10000, "iw_samples": 1,
        "annealing_options": {"init_annealing": 1.0, "scheduler": {"type": "linear", "rate": 1e-4}},
        "freebits_options": {"init_threshold": 0.5, "grouping": "", "threshold_behaviour": "linear",
                             "scheduler": {"type": "exponential", "decay_rate": 0.5, "decay_steps": 300000}},
    },
}
""",
    "model/__init__.py": "",
    "model/Model.py": """
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self, n_channels, statistics, vae_options, pred_options):
        super().__init__()
        from model.base import calc_ll_estimate  # noqa: F401  (theirs imports inside functions too)
        self.options = (vae_options, pred_options)  # what it was built with, for the tests to read
        self.shift = torch.tensor(statistics.mean, dtype=torch.float32)
        self.net = nn.Conv1d(n_channels, 2 * n_channels, 1)

    def forward(self, x, lengths=None, iw_samples=1):
        loc, scale = self.net(x - self.shift).chunk(2, dim=1)
        return torch.distributions.Normal(loc, nn.functional.softplus(scale)), []
""",
    "model/base.py": """
def calc_ll_estimate(x, pred, ls_arr, lengths, iw_samples, beta_annealing, freebits, freebits_options,
                     ll_normalization, ind_latentstate):
    return -pred.log_prob(x).sum((1, 2)).mean(0)
""",
    "model/ModelState.py": """
import torch


class ModelState:
    def __init__(self, seed, optimizer, optimizer_options, init_lr, model, init_annealing, init_freebits):
        torch.manual_seed(seed)
        self.model = model
        self.optimizer = getattr(torch.optim, optimizer)(model.parameters(), lr=init_lr, **optimizer_options)
        self.annealing, self.freebits = init_annealing, init_freebits
""",
}


def stand_in(directory, **replace: str):
    for name, text in {**STAND_IN, **replace}.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)
    return directory


def test_bench_authors_without_a_checkout_says_how_to_run_it(capsys):
    run.main(["bench", "authors", "--device", "cpu"])  # returns: exit status 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "skipped" in lines[0]
    assert "git clone https://github.com/carl-andersson/MS-STCN" in lines[0] and "--authors" in lines[0]


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"model/Model.py": None}, "not a checkout of https://github.com/carl-andersson/MS-STCN: missing model/Model"),
        ({"model/base.py": "import tables\n"}, "importing their modules failed: ModuleNotFoundError: No module named"),
        ({"model/ModelState.py": "class ModelState:\n    pass\n"}, "building their IAM-OnDB model failed: TypeError"),
    ],
    ids=["a file missing", "an import failing", "a signature changed"],
)
def test_bench_authors_refuses_what_is_not_their_checkout_in_one_line(tmp_path, capsys, files, expected):
    stand_in(tmp_path, **{name: text for name, text in files.items() if text is not None})
    for name in (name for name, text in files.items() if text is None):
        (tmp_path / name).unlink()
    with pytest.raises(SystemExit) as exit_:
        run.main(["bench", "authors", "--authors", str(tmp_path), "--quick", "--device", "cpu"])
    captured = capsys.readouterr()
    assert exit_.value.code == 2 and captured.out == ""
    assert captured.err.splitlines() == [captured.err.strip()]  # one line, no traceback
    assert captured.err.startswith(f"error: --authors {tmp_path}: {expected}"), captured.err


def test_bench_authors_times_a_stand_in_beside_ours_and_leaves_the_imports_as_they_were(tmp_path, capsys, monkeypatch):
    checkout = stand_in(tmp_path / "MS-STCN")
    ours = type(sys)("model")  # a module of their package's name, which must survive the bench
    monkeypatch.setitem(sys.modules, "model", ours)
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as Python runs by default: imports write bytecode
    path = list(sys.path)
    run.main(["bench", "authors", "--authors", str(checkout), "--quick", "--device", "cpu"])
    out = capsys.readouterr().out
    assert out.startswith(f"pyro-stcn bench authors --authors {checkout} --quick --clock wall: medians of 1 ")
    assert "threads; torch" in out.splitlines()[0]
    cells = [[c.strip() for c in line.split("|")] for line in out.splitlines()]
    rows = {(r[1], r[2]): r for r in cells if len(r) == 7 and r[1] in ("authors'", "ours")}
    shipped, paper = "their IAM-OnDB options", "paper 2's IAM-OnDB layout"
    assert list(rows) == [("authors'", shipped), ("authors'", paper), ("ours", paper), ("ours", shipped)]
    assert rows["authors'", shipped][3] == rows["authors'", paper][3] == "24"  # the stand-in's Conv1d(3, 6, 1)
    assert int(rows["ours", paper][3].replace(",", "")) > 100_000
    for network in (shipped, paper):  # each of ours against theirs built alike
        theirs = float(rows["authors'", network][4])
        seconds, ratio = float(rows["ours", network][4]), float(rows["ours", network][5])
        # ours ÷ theirs, from unrounded seconds: within the printed ones' rounding (±0.0005 s)
        assert (seconds - 5e-4) / (theirs + 5e-4) <= ratio <= (seconds + 5e-4) / max(theirs - 5e-4, 1e-9)
        assert ratio > 2  # a 24-parameter stand-in is much faster than our networks
        assert rows["authors'", network][5] == "—"
    assert "| widths * | 16, 16, 16, 8, 4 | 64, 64, 64, 64, 64 |" in out
    assert "| Gaussian components of p(dx, dy) * | 1 | 10 |" in out
    assert sys.modules["model"] is ours and not [name for name in sys.modules if name.startswith("model.")]
    assert "default_options" not in sys.modules and sys.path == path
    assert not list(checkout.rglob("__pycache__")) and sys.dont_write_bytecode is False


def test_their_options_take_paper_2s_widths_and_components_and_nothing_else():
    namespace = {}
    exec(STAND_IN["default_options.py"], namespace)
    shipped = namespace["default_model_options_iamondb"]
    wanted = {**authors.their_sizes(shipped), "widths": [64] * 5, "Gaussian components of p(dx, dy)": 10}
    changed = authors.with_sizes(shipped, wanted)
    assert authors.their_sizes(changed) == wanted
    mixture = {"type": "normal_mixture", "output_size": 2, "n_components": 10}
    assert changed["pred_options"]["sub_dists"] == [{"type": "bernoulli", "output_size": 1}, mixture]
    assert authors.their_sizes(shipped)["widths"] == [16, 16, 16, 8, 4]  # the shipped options left as they were
    back = authors.with_sizes(changed, authors.their_sizes(shipped))
    assert back["pred_options"] == shipped["pred_options"] and authors.their_sizes(back) == authors.their_sizes(shipped)
    with pytest.raises(ValueError, match="their options have 5 layers; the sizes give 2"):
        authors.with_sizes(shipped, {**wanted, "widths": [64] * 2})
    with pytest.raises(ValueError, match="differ from those sizes in latent units, strides, which only widths"):
        authors.with_sizes(shipped, {**wanted, "latent units": [8] * 5, "strides": [1] * 5})


def test_each_of_our_steps_is_set_against_theirs_built_alike(tmp_path):
    """prepare: their model built as shipped and at paper 2's sizes, ours in paper 2's
    layout and at their sizes, each of ours paired with theirs of the same network; and
    print_contest divides by that one."""
    checkout = stand_in(tmp_path / "MS-STCN")
    contest = authors.prepare(checkout, torch.device("cpu"), True, tmp_path / "runs")
    shipped, paper = "their IAM-OnDB options", "paper 2's IAM-OnDB layout"
    rows = [(c.name, c.network, c.against) for c in contest.contenders]
    assert rows == [("authors'", shipped, None), ("authors'", paper, None),
                    ("ours", paper, paper), ("ours", shipped, shipped)]  # fmt: skip
    built = [authors.their_sizes(dict(zip(("vae_options", "pred_options"), c.step.model.options)))
             for c in contest.contenders[:2]]  # fmt: skip
    assert built[0]["widths"] == [16, 16, 16, 8, 4] and built[0]["Gaussian components of p(dx, dy)"] == 1
    assert built[1]["widths"] == [64] * 5 and built[1]["Gaussian components of p(dx, dy)"] == 10
    assert contest.contenders[3].step is not contest.contenders[2].step
    seconds = {("authors'", shipped): 0.5, ("authors'", paper): 0.8, ("ours", paper): 0.4, ("ours", shipped): 0.45}
    lines = []
    authors.print_contest(contest, seconds, out=lines.append)
    ratios = {(r[1], r[2]): r[5] for r in ([c.strip() for c in line.split("|")] for line in lines) if len(r) == 7}
    assert ratios[("ours", paper)] == "0.50" and ratios[("ours", shipped)] == "0.90"
    assert ratios[("authors'", shipped)] == ratios[("authors'", paper)] == "—"
