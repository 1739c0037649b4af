"""Computing a shared network once per ELBO evaluation, for guide and model alike.

In STCN the model and the guide read the same deterministic features (the papers'
θ = φ for d). Pyro runs the guide first and then the model, replayed against the
guide's trace, with the same arguments. So the guide computes the features and
leaves them here, and the model takes them if nothing they depend on has changed
since: the same ``x`` and ``mask`` tensors, unmodified, and the same parameter
values. Anything else (sampling from the model alone, a model run on other data,
a step after an optimizer update) computes afresh. A result is handed over at most
once, so it never outlives the step that made it.
"""

from collections.abc import Callable
from typing import Generic, TypeVar

from torch import Tensor, nn

FeaturesT = TypeVar("FeaturesT")


class FeatureHandoff(Generic[FeaturesT]):
    """Passes ``compute(x, mask)`` from the guide to the model within one step.

    ``net`` is the module whose parameters ``compute`` uses; their in-place version
    counters tell whether an optimizer has stepped in between.
    """

    def __init__(self, compute: Callable[[Tensor, Tensor], FeaturesT], net: nn.Module):
        self.compute = compute
        self.net = net
        self._pending: tuple[Tensor, Tensor, tuple[int, ...], FeaturesT] | None = None

    def _versions(self, x: Tensor, mask: Tensor) -> tuple[int, ...]:
        return x._version, mask._version, sum(p._version for p in self.net.parameters())

    def for_guide(self, x: Tensor, mask: Tensor) -> FeaturesT:
        feats = self.compute(x, mask)
        self._pending = (x, mask, self._versions(x, mask), feats)
        return feats

    def for_model(self, x: Tensor, mask: Tensor) -> FeaturesT:
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] is x and pending[1] is mask and pending[2] == self._versions(x, mask):
            return pending[3]
        return self.compute(x, mask)
