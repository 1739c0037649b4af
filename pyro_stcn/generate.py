"""What the models' samplers share: the :data:`Draw` hook that makes each draw.

Each model's own ``generate`` is its sampler (STCN: ``models/stcn.py``; MS-STCN:
``models/ms_stcn.py``): cached, O(1) network work per step, or uncached, rerunning
the network at every step as the authors' code does. A draw is ``draw(name,
distribution)``; the default takes a fresh sample; tests record the draws, and a user
can, for example, take the mean instead.
"""

from collections.abc import Callable

from pyro.distributions import Distribution
from torch import Tensor

Draw = Callable[[str, Distribution], Tensor]  # (site name, distribution) -> its value


def sample(name: str, distribution: Distribution) -> Tensor:
    """The default :data:`Draw`: a fresh sample."""
    return distribution.sample()


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
    x[:, : prime.shape[1]] = prime
    return x, prime.shape[1]
