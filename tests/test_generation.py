"""Fast generation: the cached samplers equal the networks rerun at every step, and
every generated step follows the full Pyro model's conditionals."""

import re

import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

from pyro_stcn.models import MSSTCNConfig, STCNConfig
from pyro_stcn.models.ms_stcn import default_dilations
from pyro_stcn.models.priors import make_prior
from pyro_stcn.nets.heads import FusedGaussianHead, GaussianHead, fused_for_sampling
from pyro_stcn.nets.pointwise import ChannelLinear
from pyro_stcn.nets.trunk import Wavenet
from pyro_stcn.runs.registry import make_model

LIKELIHOODS = [("bernoulli", 1), ("handwriting", 3), ("gmm", 4)]


def _units(likelihood: str, x_dim: int) -> dict:
    """A standardisation as the training split would give: none for binary data, one
    offset scale for handwriting, a shift and scale per channel otherwise."""
    if likelihood == "bernoulli":
        return {}
    if likelihood == "handwriting":
        return {"shift": [0.0, 0.0, 0.0], "scale": [2.5, 2.5, 1.0]}
    return {"shift": [3.0, -2.0, 1.0, 5.0][:x_dim], "scale": [2.0, 0.5, 1.5, 3.0][:x_dim]}


def _stcn(name: str, likelihood: str, x_dim: int):
    torch.manual_seed(0)
    config = STCNConfig(x_dim=x_dim, likelihood=likelihood, z_dims=[4, 3, 2], channels=8, blocks=3, hidden=8,
                        **_units(likelihood, x_dim))  # fmt: skip
    return make_model(name, config).eval()


def _ms_stcn(strides: list[int], likelihood: str = "gmm", x_dim: int = 2, latent: bool = True):
    torch.manual_seed(0)
    layers = len(strides)
    config = MSSTCNConfig(x_dim=x_dim, likelihood=likelihood, components=2, strides=strides, channels=[6] * layers,
                          z_dims=[2] * layers, dilations=default_dilations(strides, 3), latent=latent,
                          **_units(likelihood, x_dim))  # fmt: skip
    return make_model("ms-stcn", config).eval()


MS_STRIDES = [[1, 1, 1], [1, 2, 2], [2, 3, 1], [1, 2, 2, 2, 1]]


def test_the_stepper_equals_the_trunk_over_the_whole_input():
    torch.manual_seed(0)
    trunk = Wavenet(x_dim=3, channels=6, layers=2, blocks=4)  # dilations up to 8
    s = torch.randn(2, 3, 50)
    full = trunk.over(s)
    stepper = trunk.stepper(2)
    steps = [stepper(s[:, :, i]) for i in range(50)]
    for layer in range(2):
        stepped = torch.stack([d[layer] for d in steps], dim=-1)
        assert torch.allclose(stepped, full[layer], atol=1e-6)


@pytest.mark.parametrize("name", ["stcn", "stcn-dense"])
@pytest.mark.parametrize("likelihood,x_dim", LIKELIHOODS)
def test_cached_generation_equals_rerunning_the_trunk(name, likelihood, x_dim):
    """Same seed, same draws: the queues give exactly what the authors' rerun of the
    network over the receptive field gives, here over 3x that field."""
    model = _stcn(name, likelihood, x_dim)
    steps = 3 * model.trunk.receptive_field
    torch.manual_seed(1)
    cached = model.generate(3, steps)
    torch.manual_seed(1)
    rerun = model.generate(3, steps, cached=False)
    assert torch.allclose(cached, rerun, atol=1e-5)
    assert not torch.equal(cached[0], cached[1])  # the draws differ across sequences


@pytest.mark.parametrize("strides", MS_STRIDES)
@pytest.mark.parametrize("latent", [True, False])
def test_cached_ms_stcn_generation_equals_rerunning_the_bottom_up_pass(strides, latent):
    """37 steps: not a multiple of the total stride, so the last block is cut."""
    model = _ms_stcn(strides, latent=latent)
    torch.manual_seed(1)
    cached = model.generate(3, 37)
    torch.manual_seed(1)
    rerun = model.generate(3, 37, cached=False)
    assert cached.shape == (3, 37, 2) and torch.allclose(cached, rerun, atol=1e-5)
    assert not torch.equal(cached[0], cached[1])


class Recorder:
    """A draw that samples and keeps every (name, distribution, value)."""

    def __init__(self):
        self.draws: list[tuple[str, object, torch.Tensor]] = []

    def __call__(self, name, distribution):
        value = distribution.sample()
        self.draws.append((name, distribution, value))
        return value


def _check_against_the_full_model(model, steps: int, prime: torch.Tensor | None = None) -> dict:
    """Generate, recording every draw; then run the full model once over the finished
    sequence, conditioned on the same latents, and compare each draw's log-density
    under the generator's distribution with the full model's. Steps drawn before the
    first recorded one (a prime) are filled in: x with the prime, z with zeros."""
    record = Recorder()
    x = model.generate(2, steps, prime=prime, draw=record)
    names = {m for m, _, _ in record.draws}
    drawn = {n: torch.cat([v for m, _, v in record.draws if m == n], dim=1) for n in names}
    trace = poutine.trace(poutine.uncondition(model.model)).get_trace(x, torch.ones(2, steps, dtype=torch.bool))
    values = {}
    for n in names:
        before = trace.nodes[n]["value"].shape[1] - drawn[n].shape[1]  # steps the generator did not draw
        front = x[:, :before] if n == "x" else drawn[n].new_zeros(2, before, drawn[n].shape[-1])
        values[n] = torch.cat([front, drawn[n]], dim=1)
    trace = poutine.trace(poutine.condition(model.model, data=values)).get_trace(x, torch.ones(2, steps).bool())
    for n in names:
        full = trace.nodes[n]["fn"].log_prob(values[n])[:, -drawn[n].shape[1] :]  # [batch, drawn steps]
        stepped = torch.cat([p.log_prob(v) for m, p, v in record.draws if m == n], dim=1)
        assert full.shape == stepped.shape and torch.allclose(stepped, full, atol=1e-4), n
    assert torch.equal(values["x"], x)
    return drawn


@pytest.mark.parametrize("name", ["stcn", "stcn-dense"])
@pytest.mark.parametrize("likelihood,x_dim", LIKELIHOODS)
def test_each_generated_step_follows_the_full_model(name, likelihood, x_dim):
    """Every draw's log-density under the generator's distribution equals the full
    model's, with the inputs standardised as after training; primed too."""
    model = _stcn(name, likelihood, x_dim)
    _check_against_the_full_model(model, 12)
    _check_against_the_full_model(model, 12, prime=model.generate(2, 5))


@pytest.mark.parametrize("strides", MS_STRIDES)
@pytest.mark.parametrize("likelihood,x_dim", LIKELIHOODS)
def test_each_generated_ms_stcn_step_follows_the_full_model(strides, likelihood, x_dim):
    """As above: one coarse z per block of P_l fine steps, each drawn once."""
    model = _ms_stcn(strides, likelihood, x_dim)
    steps = model.total_stride * (-(-6 // model.total_stride) + 1)  # whole top blocks, at least 7 steps
    drawn = _check_against_the_full_model(model, steps)
    assert drawn["z_1"].shape[1] == steps // strides[0]
    _check_against_the_full_model(model, steps, prime=model.generate(2, 3))


@pytest.mark.parametrize("kind", ["stcn-dense", "ms-stcn"])
def test_primed_generation_keeps_the_prime_and_continues_it(kind):
    model = _stcn(kind, "gmm", 4) if kind == "stcn-dense" else _ms_stcn([1, 2, 2], x_dim=4)
    prime = torch.randn(2, 5, 4)
    x = model.generate(2, 9, prime=prime)
    assert torch.equal(x[:, :5], prime) and (x[:, 5:] != 0).all()
    # the continuation depends on the prime
    torch.manual_seed(3)
    a = model.generate(2, 9, prime=prime)
    torch.manual_seed(3)
    b = model.generate(2, 9, prime=prime + 1)
    assert not torch.allclose(a[:, 5:], b[:, 5:])
    with pytest.raises(ValueError, match="prime has 5 steps, more than the 4 to generate|K <= 4 steps"):
        model.generate(2, 4, prime=prime)


@pytest.mark.parametrize("name", ["stcn-dense", "ms-stcn", "wavenet", "vrnn"])
def test_a_model_with_nan_weights_cannot_generate_silently(name):
    """The samplers build their distributions without validation; the weights are
    checked instead, with an error that names the parameter."""
    from tests.test_baselines import tiny

    builders = {"stcn-dense": lambda: _stcn(name, "gmm", 4), "ms-stcn": lambda: _ms_stcn([1, 2, 2])}
    model = builders.get(name, lambda: tiny(name)[0])()
    model.generate(2, 6)  # finite weights: fine
    name, weight = list(model.named_parameters())[-1]
    with torch.no_grad():
        weight.view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match=re.escape(f"parameter {name} holds NaN or infinite values, so the model")):
        model.generate(2, 6)


@pytest.mark.parametrize("name", ["stcn-dense", "ms-stcn"])
def test_a_model_whose_outputs_overflow_cannot_generate_silently(name):
    """Finite weights so large that the networks' outputs overflow: torch refuses the
    parameters while sampling, or the sequences come out non-finite; either way a
    ValueError that says so."""
    model = _stcn(name, "gmm", 4) if name == "stcn-dense" else _ms_stcn([1, 2, 2])
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e19)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(ValueError, match="the model's outputs overflowed"):
        model.generate(2, 6)


def test_a_nan_prime_cannot_generate_silently():
    model = _stcn("stcn-dense", "gmm", 4)
    prime = torch.randn(2, 5, 4)
    prime[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"prime holds NaN or infinite values \(sequence 1, step 2\)"):
        model.generate(2, 9, prime=prime)


def _through_distributions(name: str, distribution) -> torch.Tensor:
    """A custom draw that takes a fresh sample, as the default does: with it the
    samplers build every distribution object."""
    return distribution.sample()


GENERATORS = {
    "stcn-dense": lambda likelihood, x_dim: _stcn("stcn-dense", likelihood, x_dim),
    "ms-stcn": lambda likelihood, x_dim: _ms_stcn([1, 2, 2], likelihood, x_dim),
}


@pytest.mark.parametrize("kind", list(GENERATORS))
@pytest.mark.parametrize("likelihood,x_dim", [*LIKELIHOODS, ("gaussian", 2)])
@pytest.mark.parametrize("prior", ["dynamic", "standard", "mixture"])
def test_draws_without_distribution_objects_are_the_distributions_draws(kind, likelihood, x_dim, prior):
    """The default draw skips building distributions (pyro_stcn.nets.sampling); with one
    seed it gives the very numbers of each distribution's own ``sample()``, cached and
    uncached, for every likelihood and prior."""
    model = GENERATORS[kind](likelihood, x_dim)
    contexts, z_dims = model.prior.contexts, model.prior.z_dims
    torch.manual_seed(2)
    model.prior = make_prior(prior, contexts, z_dims, hidden=5, layers=1)
    for cached in (True, False):
        torch.manual_seed(3)
        fast = model.generate(2, 14, cached=cached)
        torch.manual_seed(3)
        built = model.generate(2, 14, cached=cached, draw=_through_distributions)
        assert torch.equal(fast, built)
    assert not torch.equal(fast[0], fast[1])


@pytest.mark.parametrize("layers", [0, 1, 2])
@pytest.mark.parametrize("shape", [(3,), (2, 5), (0,)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_fused_gaussian_head_equals_its_two_nets(layers, shape, dtype):
    """FusedGaussianHead's (μ, σ) equal GaussianHead's two nets, computed independently in
    float64, to float32 rounding (1e-5), for every depth the models build, float32 and
    float64 models, and contexts with and without a time dim, a transposed view among
    them, and with no rows."""
    torch.manual_seed(layers)
    head = GaussianHead(7, 6, 4, layers=layers).to(dtype)
    with torch.no_grad():  # spread the biases, so that a swapped or dropped one shows
        for p in head.parameters():
            p.normal_()
    h = torch.randn(*shape[::-1], 7, dtype=dtype).transpose(0, len(shape) - 1)  # [*shape, 7]; transposed if 2-d
    with torch.no_grad():
        loc, scale = FusedGaussianHead(head)(h)

    def net(linears: nn.Sequential) -> torch.Tensor:  # the mlp by hand: ReLU between maps
        x = h.double()
        for i, m in enumerate(linears[::2]):
            x = x if i == 0 else x.relu()
            x = x @ m.weight.double().T + m.bias.double()
        return x

    assert loc.shape == scale.shape == (*shape, 4) and loc.dtype == scale.dtype == dtype
    torch.testing.assert_close(loc.double(), net(head.loc), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scale.double(), F.softplus(net(head.scale)).clamp(1e-3, 5.0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", list(GENERATORS))
def test_samples_with_fused_heads_equal_those_with_the_heads_apart(kind, monkeypatch):
    """Same seed, same draws: generation with the Gaussian heads fused gives the
    sequences of the heads as built, to float32 rounding carried through the steps."""
    model = GENERATORS[kind]("gmm", 4)
    torch.manual_seed(5)
    fused = model.generate(3, 12)
    monkeypatch.setattr(FusedGaussianHead, "fits", staticmethod(lambda head: False))
    torch.manual_seed(5)
    apart = model.generate(3, 12)
    torch.testing.assert_close(fused, apart, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(fused[0], fused[1], atol=1e-2)  # the draws differ across sequences


class _TanhHead(GaussianHead):
    def forward(self, h):
        loc, scale = super().forward(h)
        return loc.tanh(), scale


def _head(bias: bool = True) -> GaussianHead:
    head = GaussianHead(5, 4, 3, layers=1)
    head.loc[0] = ChannelLinear(5, 4, bias=bias)
    return head


def test_only_heads_computing_as_built_are_fused():
    """A subclass with its own forward, a replaced net (another activation, or one
    module instead of a Sequential), a map without bias and a hooked net each keep
    their own computation."""
    assert FusedGaussianHead.fits(_head())
    assert not FusedGaussianHead.fits(_TanhHead(5, 4, 3, layers=1))
    tanh = _head()
    tanh.loc[1] = nn.Tanh()
    assert not FusedGaussianHead.fits(tanh)
    single = GaussianHead(5, 4, 3, layers=0)
    single.loc = ChannelLinear(5, 3)
    assert not FusedGaussianHead.fits(single)
    assert not FusedGaussianHead.fits(_head(bias=False))
    hooked = _head()
    hooked.scale[2].register_forward_hook(lambda m, args, out: out * 2)
    assert not FusedGaussianHead.fits(hooked)


def test_heads_are_fused_only_while_sampling_without_gradients(monkeypatch):
    """The samplers fuse the heads built as such and no other; afterwards, also after a
    failed generation, each head is as before, and a generation nested in a custom draw
    leaves the outer one's heads fused. With gradients on, even inside a sampler, a head
    runs its nets (a fused head has no gradients: training through one would silently
    stop learning)."""
    model = _stcn("stcn-dense", "gmm", 4)
    built, replaced = model.prior.heads[0], model.prior.heads[1]
    replaced.loc = nn.Sequential(nn.Linear(replaced.loc[0].in_features, 4), nn.Tanh(), nn.Linear(4, 3))
    seen, fused_calls = [], []
    fused_call = FusedGaussianHead.__call__
    monkeypatch.setattr(FusedGaussianHead, "__call__", lambda f, h: fused_calls.append(f) or fused_call(f, h))
    built.register_forward_hook(lambda m, args, out: seen.append(("built", m.fused is not None)))
    replaced.register_forward_hook(lambda m, args, out: seen.append(("replaced", m.fused is not None)))
    model.generate(2, 3)
    assert seen == [("replaced", False), ("built", True)] * 3  # top-down: layer 1, then layer 0, each step
    assert len(fused_calls) == 6  # fused heads computed layers 0 and 2 (built as such) at each of the 3 steps
    assert all(m.fused is None for m in model.modules() if isinstance(m, GaussianHead))
    with pytest.raises(ValueError, match="prime"):
        model.generate(2, 3, prime=torch.zeros(2, 1, 5))
    assert all(m.fused is None for m in model.modules() if isinstance(m, GaussianHead))

    nested = []

    def nesting(name, distribution):  # at the first step's x: a whole generation, then forget its records
        if name == "x" and not nested:
            nested.append(model.generate(1, 2))
            seen.clear()
        return distribution.sample()

    model.generate(2, 2, draw=nesting)
    assert seen == [("replaced", False), ("built", True)]  # the second step, after the nested call
    with fused_for_sampling(model), torch.enable_grad():
        loc, scale = built(torch.randn(2, 1, built.loc[0].in_features))
    assert loc.requires_grad and scale.requires_grad
