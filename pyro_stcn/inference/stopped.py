"""The guide's log density with its parameters stopped: what STL and DReG differentiate.

Write q_φ(z) for the guide and z = z(φ, ε) for its reparameterised draw. The pathwise
gradient of log q_φ(z(φ, ε)) has two parts,

    d/dφ log q_φ(z) = ∂_z log q_φ(z) · ∂z/∂φ   +   ∂_φ log q_φ(z)|_z        (the score),

and the score has mean zero but not zero variance, even when q equals the prior.
"Sticking the landing" [1] and the doubly reparameterised IWAE gradient [2] drop it by
differentiating log q_{sg(φ)}(z(φ, ε)): the density with every parameter φ stopped (sg),
read at the live draw, so that only the path through z carries gradient.

φ here is everything the guide's density depends on besides z: the guide's weights,
the networks it shares with the model (the trunk, a ladder guide's prior) and the
features they compute. Latents the site conditions on (z^{l+1} in STCN's guides) stay
live: the joint density log q(z) = Σ_l log q(z^l | z^{l+1}) is what is evaluated, so
the score of the *joint* is what is dropped. That is what [2] needs to be unbiased,
and what makes the estimate of KL(q || p) have zero gradient when q = p [1].

A guide site gives its stopped density through its ``infer`` dict:
``infer={"log_prob_stopped": fn}``, ``fn(values)`` the site's log density (its
distribution's masks applied) at ``values[name]``, given the values of the latents by
name, with every parameter stopped (:func:`frozen`). The library's guides all do.
A site without one is read through its distribution rebuilt from detached parameters
(:func:`detached`: Gaussians and any distribution whose parameters are tensors, under
``.to_event()`` and ``.mask()``); that stops the latents it conditions on too, which
keeps STL unbiased (each layer's score given the layers above has mean zero) but not
DReG, and a flow cannot be rebuilt so: such a site needs the hook.

References:
    - [1] Roeder, Wu & Duvenaud, "Sticking the Landing: Simple, Lower-Variance Gradient
      Estimators for Variational Inference", NeurIPS 2017.
    - [2] Tucker, Lawson, Gu & Maddison, "Doubly Reparameterized Gradient Estimators for
      Monte Carlo Objectives", ICLR 2019.
"""

from collections.abc import Callable, Mapping
from typing import TypeVar

import torch
from pyro.distributions.torch_distribution import MaskedDistribution
from torch import Tensor, nn
from torch.distributions import Distribution, Independent

LOG_PROB_STOPPED = "log_prob_stopped"  # the infer key of a guide site's stopped density

T = TypeVar("T")


class _Holder(nn.Module):
    """One module over several, so that one functional call swaps all their parameters."""

    def __init__(self, modules: tuple[nn.Module, ...]):
        super().__init__()
        self.parts = nn.ModuleList(modules)

    def forward(self, fn: Callable[[], T]) -> T:
        return fn()


def frozen(fn: Callable[[], T], *modules: nn.Module) -> T:
    """``fn()`` with every parameter of ``modules`` read as its detached value: the same
    numbers, no gradient to the parameters. Inputs that ``fn`` passes in keep theirs."""
    holder = _Holder(modules)
    params = {name: p.detach() for name, p in holder.named_parameters()}
    return torch.func.functional_call(holder, params, (fn,))


def detached(fn: Distribution) -> Distribution:
    """``fn`` rebuilt from detached parameters, through ``.to_event()`` and ``.mask()``.

    Works for any distribution whose parameters are the tensors named in its
    ``arg_constraints`` (Normal, StudentT, Laplace, ...). Raises ``ValueError`` for one
    that is not so built (a transformed distribution, a mixture): give its site a
    ``log_prob_stopped`` hook instead.
    """
    if isinstance(fn, Independent):
        return type(fn)(detached(fn.base_dist), fn.reinterpreted_batch_ndims)
    if isinstance(fn, MaskedDistribution):
        return type(fn)(detached(fn.base_dist), fn._mask)
    params = {name: fn.__dict__[name] for name in fn.arg_constraints if name in fn.__dict__}
    if not params or not all(isinstance(v, Tensor) for v in params.values()):
        raise ValueError(
            f"cannot stop the parameters of a {type(fn).__name__} by rebuilding it; give its guide site "
            f"infer={{{LOG_PROB_STOPPED!r}: fn}} (pyro_stcn.inference.stopped), or use the pathwise gradient"
        )
    try:
        return type(fn)(**{name: v.detach() for name, v in params.items()}, validate_args=False)
    except TypeError as e:
        raise ValueError(f"cannot rebuild a {type(fn).__name__} from its parameters {sorted(params)}: {e}") from None


def stopped_log_prob(guide_site: dict, values: Mapping[str, Tensor]) -> Tensor:
    """log q_{sg(φ)} of a guide site at ``values[name]``, given the latents' ``values``
    by name: the site's hook (``infer["log_prob_stopped"]``) if it has one, else its
    distribution rebuilt by :func:`detached`. The distribution's masks are applied; the
    site's (``poutine.mask``) and its scale are not."""
    hook = guide_site["infer"].get(LOG_PROB_STOPPED)
    if hook is not None:
        return hook(values)
    return detached(guide_site["fn"]).log_prob(values[guide_site["name"]])
