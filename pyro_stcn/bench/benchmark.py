"""Benchmarks that print ratios: what Pyro costs over hand-written PyTorch, how a step
grows with T, and how far generation is from the hardware floor.

Every figure is the median of interleaved repeats (each repeat runs every contender
once, in turn), so that load from other processes falls on all of them alike.

- :func:`step_ratio`: one SVI step (zero_grad, the objective's loss, backward) of a
  model and guide against the same networks under a hand-written loss
  (:mod:`pyro_stcn.bench.handwritten`: trunk once, prior once, analytic KL). Both run
  with Pyro's validation off, as the trainer's steps do after its first
  (:mod:`pyro_stcn.training.loop`).
- :func:`step_scaling`: step time and memory at T, 2T and 4T. Memory is the peak
  allocated on CUDA; on the CPU, which has no allocator statistics, the bytes of the
  distinct storages autograd holds for backward (activations and weights), which is
  what grows with T.
- :func:`generation`: per-step time of cached generation (fast-Wavenet queues)
  against uncached (the trunk rerun over the window at every step, as the authors'
  code does) and against the floor of one matrix-vector product over as many
  weights as the model has (a matrix product at batch > 1).
"""

import copy
import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_stcn.bench.handwritten import ms_stcn_independent_loss, stcn_ladder_loss
from pyro_stcn.inference.objectives import LayerwiseELBO, LinearFreeBitsELBO
from pyro_stcn.models import MS_STCN_LAYOUTS, MSSTCNConfig, STCNConfig
from pyro_stcn.nets.compiled import compile_networks
from pyro_stcn.nets.precision import network_autocast
from pyro_stcn.runs.presets import PRESETS
from pyro_stcn.runs.registry import make_guide, make_model


@dataclass
class GenerationTiming:
    steps: int
    cached_seconds: float
    uncached_seconds: float
    max_difference: float  # between the two samplers' sequences, same seed

    @property
    def speed_up(self) -> float:
        return self.uncached_seconds / self.cached_seconds


def time_generation(generate: Callable[..., torch.Tensor], steps: int, num: int = 1, seed: int = 0) -> GenerationTiming:
    """Wall-clock seconds of ``generate(num, steps, cached=...)`` both ways."""
    seconds, sequences = {}, {}
    for cached in (True, False):
        torch.manual_seed(seed)
        _sync()
        start = time.perf_counter()
        sequences[cached] = generate(num, steps, cached=cached)
        _sync()
        seconds[cached] = time.perf_counter() - start
    difference = float((sequences[True] - sequences[False]).abs().max())
    return GenerationTiming(steps, seconds[True], seconds[False], difference)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]  # the bench command's --clock sets it


def interleaved(contenders: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each contender over ``repeats`` rounds, each round running
    every contender once in turn (after ``warmup`` untimed rounds). Seconds of
    :data:`clock`: wall-clock, or this process's CPU time (``--clock cpu``). CPU time
    leaves out waiting for a core, but counts OpenMP threads spinning while a sibling
    is descheduled, so on an oversubscribed machine with several threads it overstates
    (measured: uncached generation 1.14 s per step against 0.1 s wall-clock); on CUDA it
    misses the GPU's time. Use it with one thread, or not at all."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for round_ in range(warmup + repeats):
        for name, run in contenders.items():
            _sync()
            start = clock()
            run()
            _sync()
            if round_ >= warmup:
                times[name].append(clock() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# -- the two benchmarked set-ups --------------------------------------------------------


@dataclass
class Setup:
    """A model, its guide and objective, the hand-written loss of the same networks,
    and a batch maker: ``batch(B, T)`` -> (x, mask)."""

    name: str
    model: nn.Module
    guide: nn.Module
    objective: LayerwiseELBO
    reference: Callable
    batch_size: int
    length: int
    bf16: bool = False  # the networks under bfloat16 autocast (pyro_stcn.nets.precision)

    def batch(self, batch_size: int, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Handwriting-like data: (dx, dy) Gaussian, the pen bit 0/1; every step real."""
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch_size, length, 3, generator=g)
        x[..., 2] = (torch.rand(batch_size, length, generator=g) < 0.1).float()
        return x.to(device), torch.ones(batch_size, length, dtype=torch.bool, device=device)

    def pyro_step(self, x: Tensor, mask: Tensor) -> Callable[[], Tensor]:
        """One step through Pyro: the objective's differentiable loss."""

        def loss() -> tuple[Tensor, Tensor]:
            value = self.objective.differentiable_loss(self.model.model, self.guide, x, mask)
            return value, value

        return self._step(loss, x)

    def reference_step(self, x: Tensor, mask: Tensor) -> Callable[[], Tensor]:
        """The same step by the hand-written loss."""
        return self._step(lambda: self.reference(self.model, self.guide, self.objective, x, mask), x)

    def _step(self, loss: Callable[[], tuple[Tensor, Tensor]], x: Tensor) -> Callable[[], Tensor]:
        """zero_grad, ``loss()`` -> (value, surrogate) with Pyro's validation off (as the
        trainer's steps after its first) and the networks in bfloat16 if ``bf16``, then
        backward of the surrogate per sequence; the step returns the value."""
        params = [*self.model.parameters(), *self.guide.parameters()]

        def step() -> Tensor:
            for p in params:
                p.grad = None
            with pyro.validation_enabled(False), network_autocast(x.device, self.bf16):
                value, surrogate = loss()
            (surrogate / len(x)).backward()
            return value

        return step


def stcn_dense_setup(device: torch.device, quick: bool = False) -> Setup:
    """STCN-dense at paper 1's handwriting size (L = 5, K = 6, 256 filters, z = [32, 16,
    8, 4, 2], five output layers, 20 components), ladder guide, plain ELBO, B = 20,
    T = 256; ``quick``: 16 filters, K = 2, B = 2, T = 32."""
    paper = PRESETS["iamondb-stcn-dense"]
    sizes = dict(channels=16, blocks=2, hidden=16) if quick else dict(
        channels=paper["channels"][0], blocks=paper["blocks"], hidden=paper["hidden"])  # fmt: skip
    config = STCNConfig(x_dim=3, likelihood=paper["likelihood"], components=paper["components"],
                        z_dims=paper["z_dims"], output_layers=paper["output_layers"], **sizes)  # fmt: skip
    torch.manual_seed(0)
    model = make_model("stcn-dense", config).to(device)
    guide = make_guide("ladder", model).to(device)
    return Setup("STCN-dense", model, guide, LayerwiseELBO(), stcn_ladder_loss, *((2, 32) if quick else (20, 256)))


def ms_stcn_setup(device: torch.device, quick: bool = False, config: MSSTCNConfig | None = None) -> Setup:
    """MS-STCN in paper 2's IAM-OnDB layout (handwriting likelihood) or ``config``,
    independent guide, linear free bits (λ = 0.5), B = 16, T = 1024; ``quick``: 8
    channels, B = 2, T = 64."""
    config = config or MS_STCN_LAYOUTS["iamondb"]
    if quick:
        config = type(config)(**{**vars(config), "channels": [8] * 5})
    torch.manual_seed(0)
    model = make_model("ms-stcn", config).to(device)
    guide = make_guide("independent", model).to(device)
    objective = LinearFreeBitsELBO(lam=0.5)
    return Setup("MS-STCN", model, guide, objective, ms_stcn_independent_loss, *((2, 64) if quick else (16, 1024)))


# -- the measurements --------------------------------------------------------------------


def step_ratio(setup: Setup, device: torch.device, repeats: int) -> dict[str, float]:
    """Median seconds of the Pyro step and the hand-written one, and their ratio."""
    x, mask = setup.batch(setup.batch_size, setup.length, device)
    t = interleaved({"pyro": setup.pyro_step(x, mask), "reference": setup.reference_step(x, mask)}, repeats)
    return {**t, "ratio": t["pyro"] / t["reference"]}


def compiled_ratio(setup: Setup, device: torch.device, repeats: int) -> dict[str, float]:
    """Median seconds of the Pyro step with the networks as they are and with copies of
    them compiled (:mod:`pyro_stcn.nets.compiled`; the first, compiling, steps are
    warm-up), and compiled ÷ uncompiled."""
    x, mask = setup.batch(setup.batch_size, setup.length, device)
    model, guide = copy.deepcopy((setup.model, setup.guide))  # one copy: the guide keeps sharing the model's nets
    compile_networks(model, guide, device=device)
    twin = dataclasses.replace(setup, model=model, guide=guide)
    steps = {"uncompiled": setup.pyro_step(x, mask), "compiled": twin.pyro_step(x, mask)}
    t = interleaved(steps, repeats, warmup=2)
    return {**t, "ratio": t["compiled"] / t["uncompiled"]}


def backward_memory(step: Callable[[], object], device: torch.device) -> int:
    """Bytes of one step: the CUDA allocator's peak, or on the CPU the distinct storages
    autograd saves for backward."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        step()
        return torch.cuda.max_memory_allocated(device)
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storages.values())


def step_scaling(setup: Setup, device: torch.device, repeats: int) -> list[dict[str, float]]:
    """Step time and memory at T/4, T/2 and T (so T, 2T, 4T from the smallest)."""
    lengths = [setup.length // 4, setup.length // 2, setup.length]
    steps = {T: setup.pyro_step(*setup.batch(setup.batch_size, T, device)) for T in lengths}
    times = interleaved({str(T): step for T, step in steps.items()}, repeats)
    return [{"T": T, "seconds": times[str(T)], "bytes": backward_memory(steps[T], device)} for T in lengths]


def matvec_floor(weights: int, batch: int, device: torch.device, repeats: int) -> float:
    """Seconds of one product of a ``[batch, 1024]`` input with a matrix of ``weights``
    entries: no sampler can do less work per step than reading every weight once."""
    m = torch.randn(weights // 1024, 1024, device=device)
    v = torch.randn(batch, 1024, device=device)
    return interleaved({"mv": lambda: F.linear(v, m)}, repeats * 20, warmup=5)["mv"]


def generation(model: nn.Module, batch: int, steps: int, uncached_steps: int, device: torch.device, repeats: int):
    """Per-step seconds of cached and uncached generation at ``batch`` and of the floor."""
    model.eval()
    with torch.no_grad():
        t = interleaved({
            "cached": lambda: model.generate(batch, steps, cached=True),
            "uncached": lambda: model.generate(batch, uncached_steps, cached=False),
        }, repeats)  # fmt: skip
    weights = sum(p.numel() for name, p in model.named_parameters() if name.endswith("weight"))
    model.train()
    cached, uncached = t["cached"] / steps, t["uncached"] / uncached_steps
    floor = matvec_floor(weights, batch, device, repeats)
    return {"cached": cached, "uncached": uncached, "floor": floor, "weights": weights}


# -- printed tables ------------------------------------------------------------------------


def machine_line(device: torch.device) -> str:
    """Where the figures come from: device, threads, torch version, load."""
    import os

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return f"{where}; torch {torch.__version__}; load average {load}"


def print_steps(setups: list[Setup], device: torch.device, repeats: int, out: Callable[[str], None] = print) -> None:
    out("| model | B × T | Pyro step (s) | hand-written (s) | Pyro / hand-written |")
    out("|---|---|---|---|---|")
    for s in setups:
        r = step_ratio(s, device, repeats)
        out(f"| {s.name} | {s.batch_size} × {s.length} | {r['pyro']:.3f} | {r['reference']:.3f} | {r['ratio']:.2f} |")


def print_compiled(setups: list[Setup], device: torch.device, repeats: int, out: Callable[[str], None] = print) -> None:
    out("| model | B × T | uncompiled step (s) | compiled (s) | compiled ÷ uncompiled |")
    out("|---|---|---|---|---|")
    for s in setups:
        r = compiled_ratio(s, device, repeats)
        out(f"| {s.name} | {s.batch_size} × {s.length} | {r['uncompiled']:.3f} | {r['compiled']:.3f} "
            f"| {r['ratio']:.2f} |")  # fmt: skip


def print_scaling(setups: list[Setup], device: torch.device, repeats: int, out: Callable[[str], None] = print) -> None:
    what = "peak allocated (MB)" if device.type == "cuda" else "held for backward (MB)"
    out(f"| model | T | step (s) | time ÷ time at T | {what} | memory ÷ memory at T |")
    out("|---|---|---|---|---|---|")
    for s in setups:
        rows = step_scaling(s, device, repeats)
        for r in rows:
            out(f"| {s.name} | {r['T']} | {r['seconds']:.3f} | {r['seconds'] / rows[0]['seconds']:.2f} | "
                f"{r['bytes'] / 2**20:.0f} | {r['bytes'] / rows[0]['bytes']:.2f} |")  # fmt: skip


def print_generation(
    model: nn.Module, batches: list[int], steps: int, device: torch.device, repeats: int,
    out: Callable[[str], None] = print,
) -> None:  # fmt: skip
    out(f"| batch | cached (ms/step) | uncached (ms/step) | uncached ÷ cached | floor (ms) | cached ÷ floor "
        f"| sequences of {steps} steps per s |")  # fmt: skip
    out("|---|---|---|---|---|---|---|")
    for b in batches:
        uncached_steps = steps if b == 1 else max(1, steps // 8)
        g = generation(model, b, steps, uncached_steps, device, repeats)
        note = "" if uncached_steps == steps else f" ({uncached_steps} steps)"
        out(f"| {b} | {1e3 * g['cached']:.2f} | {1e3 * g['uncached']:.2f}{note} "
            f"| {g['uncached'] / g['cached']:.1f} | {1e3 * g['floor']:.3f} | {g['cached'] / g['floor']:.1f} "
            f"| {b / (steps * g['cached']):.2f} |")  # fmt: skip
