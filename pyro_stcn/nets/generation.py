"""What the models' samplers share: the :data:`Draw` hook that makes each draw, and
the autoregressive loop over a TCN trunk.

Each model's own ``generate`` is its sampler (STCN and Wavenet through
:func:`over_trunk`; MS-STCN, RNN and VRNN their own loops): the TCN samplers run cached,
O(1) network work per step, or uncached, rerunning the network at every step as the
authors' code does. A draw is ``draw(name, distribution)``; the default takes a fresh
sample; tests record the draws, and a user can, for example, take the mean instead.
"""

import functools
from collections.abc import Callable

import pyro
import torch
import torch.nn.functional as F
from pyro.distributions import Distribution
from torch import Tensor

from pyro_stcn.nets.heads import fused_for_sampling
from pyro_stcn.nets.normalise import Standardisation
from pyro_stcn.nets.trunk import Wavenet

Draw = Callable[[str, Distribution], Tensor]  # (site name, distribution) -> its value


def sample(name: str, distribution: Distribution) -> Tensor:
    """The default :data:`Draw`: a fresh sample."""
    return distribution.sample()


def draw_from(draw: Draw, name: str, source: torch.nn.Module, *inputs: Tensor | int) -> Tensor:
    """``draw(name, source(*inputs))``, where ``source`` is a prior or an observation
    model. With the default :func:`sample` it is ``source.sample(*inputs)`` instead: the
    same numbers without building the distribution, which at batch 1 costs more than
    the draw (:mod:`pyro_stcn.nets.sampling`)."""
    if draw is sample:
        return source.sample(*inputs)
    return draw(name, source(*inputs))


def sampler(generate: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Decorates a model's ``generate(self, ...)``: no gradients, the Gaussian heads
    fused (:func:`~pyro_stcn.nets.heads.fused_for_sampling`), and Pyro's validation
    off while it runs (whatever the caller set), for a custom ``draw``, which gets
    distributions built at every step from the model's own networks: at batch 1 checking
    them cost about a sixth of a step's operations (measured on STCN-dense before the
    default draw stopped building them: 974 operator calls per step's latents and output
    with validation, 829 without). What validation caught is checked instead, each time with a
    ``ValueError``: the weights before (one read from the device; the error names the
    parameter), the prime in :func:`start_sequences`, and outputs that overflow, during
    (torch refuses such parameters when it samples) or after (non-finite sequences)."""

    @functools.wraps(generate)
    def without_checks(model: torch.nn.Module, *args, **kwargs) -> Tensor:
        names, weights = zip(*model.named_parameters())
        # A float64 sum is finite exactly when every float32 entry is, and reads each once.
        finite = torch.stack([p.sum(dtype=torch.float64) for p in weights]).isfinite().tolist()
        if not all(finite):
            raise ValueError(
                f"parameter {names[finite.index(False)]} holds NaN or infinite values, so the model cannot generate "
                "(a diverged or corrupted run? look at its log.csv)"
            )
        overflowed = "the model's outputs overflowed: its networks gave invalid distribution parameters"
        try:
            with torch.no_grad(), pyro.validation_enabled(False), fused_for_sampling(model):
                x = generate(model, *args, **kwargs)
        except RuntimeError as e:  # e.g. torch.normal refusing a NaN scale
            raise ValueError(f"{overflowed} ({e})") from e
        if not torch.isfinite(x).all():
            raise ValueError(f"{overflowed}: the generated sequences hold NaN or infinite values")
        return x

    return without_checks


def start_sequences(num: int, steps: int, x_dim: int, prime: Tensor | None, like: Tensor) -> tuple[Tensor, int]:
    """Zeros ``[num, steps, x_dim]`` (``like``'s dtype and device) with the first K steps
    set to ``prime [num, K, x_dim]``, if given; and K."""
    x = like.new_zeros(num, steps, x_dim)
    if prime is None:
        return x, 0
    if prime.dim() != 3 or prime.shape[0] != num or prime.shape[2] != x_dim or prime.shape[1] > steps:
        raise ValueError(
            f"prime has shape {list(prime.shape)}; expected [{num}, K, {x_dim}] with K <= {steps} steps to generate"
        )
    if not torch.isfinite(prime).all():
        row, step = (int(i) for i in (~torch.isfinite(prime)).any(-1).nonzero()[0])
        raise ValueError(f"prime holds NaN or infinite values (sequence {row}, step {step}); expected finite steps")
    x[:, : prime.shape[1]] = prime
    return x, prime.shape[1]


def over_trunk(
    trunk: Wavenet, units: Standardisation, x: Tensor, given: int, cached: bool, emit: Callable[[list[Tensor]], Tensor]
) -> Tensor:
    """Fill ``x [num, steps, x_dim]`` (data units) from step ``given`` on, one step at a
    time: x_t = ``emit(d_{t-1})``, with d_{t-1} the trunk's features of x_{<t}, one
    ``[num, 1, channels]`` per layer, and ``emit`` returning ``[num, x_dim]``.

    ``cached`` runs the trunk one step at a time with fast-Wavenet queues (O(blocks)
    per step); otherwise it reruns the trunk over the last receptive field at every
    step, as the authors' code does (O(receptive field) per step)."""
    num, steps, _ = x.shape
    s = F.pad(units.normalise(x), (0, 0, 1, 0)).transpose(1, 2)  # the trunk's input: a zero step first
    stepper = trunk.stepper(num) if cached else None
    field = trunk.receptive_field
    for t in range(steps):
        if cached:
            d = stepper(s[:, :, t])
        else:
            d = [h[:, :, -1] for h in trunk.over(s[:, :, max(0, t + 1 - field) : t + 1])]
        if t < given:
            continue
        x[:, t] = emit([h[:, None] for h in d])
        s[:, :, t + 1] = units.normalise(x[:, t])
    return x
