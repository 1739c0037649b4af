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


class PriorHandoff:
    """Passes the prior's (μ, σ) of each latent layer from a ladder guide to the model
    within one step, so that the prior networks run once, not twice.

    The ladder guide precision-weights with p(z^l | [d^l_{t-1}, z^{l+1}_t]); the model,
    replayed against the guide's trace, then asks for that very prior: the same d^l
    tensor (handed over by :class:`FeatureHandoff`) and the same z^{l+1} tensor (Pyro's
    replay returns the guide's value itself). The model takes the guide's (μ, σ) only
    when d^l and z^{l+1} are those objects and no prior parameter has changed in place
    since; anything else computes afresh. Each value is handed over at most once.

    ``compute(layer, d, z_above)`` gives (μ, σ); ``prior`` is the module it uses.
    """

    def __init__(self, compute: Callable[[int, Tensor, Tensor | None], tuple[Tensor, Tensor]], prior: nn.Module):
        self.compute = compute
        self.prior = prior
        self._pending: dict[int, tuple[Tensor, Tensor | None, int, tuple[Tensor, Tensor]]] = {}

    def _version(self) -> int:
        return sum(p._version for p in self.prior.parameters())

    def for_guide(self, layer: int, d: Tensor, z_above: Tensor | None) -> tuple[Tensor, Tensor]:
        """(μ, σ) of p(z^l | [d, z_above]), kept for the model."""
        gaussian = self.compute(layer, d, z_above)
        self._pending[layer] = (d, z_above, self._version(), gaussian)
        return gaussian

    def for_model(self, layer: int, d: Tensor, z_above: Tensor | None) -> tuple[Tensor, Tensor] | None:
        """The guide's (μ, σ) for these very inputs, or None: the caller computes."""
        pending = self._pending.pop(layer, None)
        if pending is not None and pending[0] is d and pending[1] is z_above and pending[2] == self._version():
            return pending[3]
        return None
