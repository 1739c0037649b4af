"""Computing a shared network once per ELBO evaluation, for guide and model alike.

In STCN the model and the guide read the same deterministic features (the papers'
θ = φ for d). Pyro runs the guide first and then the model, replayed against the
guide's trace, with the same arguments. So the guide computes the features and
leaves them here, and the model takes them when it is called with the very same
``x`` and ``mask`` tensors. Anything else (sampling from the model alone, a model
run on other data) computes its own. A result is handed over at most once, so it
never outlives the step that made it.
"""

from collections.abc import Callable
from typing import Generic, TypeVar

from torch import Tensor

F = TypeVar("F")


class FeatureHandoff(Generic[F]):
    """Passes ``compute(x, mask)`` from the guide to the model within one step."""

    def __init__(self, compute: Callable[[Tensor, Tensor], F]):
        self.compute = compute
        self._pending: tuple[Tensor, Tensor, F] | None = None

    def for_guide(self, x: Tensor, mask: Tensor) -> F:
        feats = self.compute(x, mask)
        self._pending = (x, mask, feats)
        return feats

    def for_model(self, x: Tensor, mask: Tensor) -> F:
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] is x and pending[1] is mask:
            return pending[2]
        return self.compute(x, mask)
