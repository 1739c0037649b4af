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
