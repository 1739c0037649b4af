"""The KL term of every latent site: its value, and the estimate an objective's gradient follows.

Analytic where ``kl_divergence`` has a rule for the guide's and the model's
distributions (:func:`unit_kl`); otherwise the one-sample Monte Carlo estimate
log q(z) - log p(z) at the guide's reparameterised draw, per batch element and step,
whose gradient :func:`kl_estimate` chooses:

- ``"control-variate"``: KL(q₀ || p̃) in closed form plus the sampled rest,
  log p̃(ε) - log p(z) - log abs(det ∂z/∂ε), with q₀ the guide's Gaussian base (below a
  flow) and p̃ the prior or a mixture prior's moment-matched Gaussian
  (:func:`control_variate_kl`); where no such pair exists, sticking the landing;
- ``"stl"``, sticking the landing [1]: log q_{sg(φ)}(z) - log p(z), the guide's density
  with its parameters stopped (:mod:`pyro_stcn.inference.stopped`);
- ``"pathwise"``: log q(z) - log p(z), ``TraceMeanField_ELBO``'s.

:func:`per_dimension` puts a sampled estimate of a whole vector in the unit of analytic
KLs, one value per latent dimension, so free bits count the same unit everywhere.

References:
    - [1] Roeder, Wu & Duvenaud, "Sticking the Landing", NeurIPS 2017.
"""

from collections.abc import Mapping

import torch
from pyro.distributions.torch_distribution import MaskedDistribution
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import Independent, MixtureSameFamily, Normal, TransformedDistribution, kl_divergence

from pyro_stcn.inference.stopped import stopped_log_prob


def _unwrap(fn):
    """Strip ``.mask()`` and ``.to_event()`` off a site's distribution: the base, its
    masks each with the number of event dims outside it, and the total event dims."""
    masks, event_dims = [], 0
    while isinstance(fn, (MaskedDistribution, Independent)):
        if isinstance(fn, MaskedDistribution):
            masks.append((fn._mask, event_dims))
        else:
            event_dims += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    return fn, masks, event_dims


def layer_of(model_site: dict) -> str:
    """The latent layer a site belongs to: ``infer["layer"]`` if set, else its name."""
    return model_site["infer"].get("layer", model_site["name"])


def bottom_first(layers) -> list[str]:
    """Layer names in order, bottom first: z_1, z_2, ..., z_10 (a VRNN's single "z" too)."""
    return sorted(layers, key=lambda name: (len(name), name))


def _log_density(site: dict) -> Tensor:
    """log f(value) of a sample site, its distribution's masks applied, unscaled: the
    trace's memoised ``unscaled_log_prob`` (so a flow is not inverted twice) if there."""
    if "unscaled_log_prob" in site:
        return site["unscaled_log_prob"]
    return site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])


def _apply_masks(kl: Tensor, masks: list, event_dims: int) -> Tensor:
    """Zero ``kl`` where any mask (each with the event dims outside it) is False."""
    for mask, outside in masks:
        if mask is not None and mask is not True:
            mask = torch.as_tensor(mask, device=kl.device)
            kl = torch.where(mask[(...,) + (None,) * (event_dims - outside)], kl, 0.0)
    return kl


def latent_values(trace) -> dict[str, Tensor]:
    """The value of every latent site of a trace (unobserved, not a plate), by name."""
    return {
        name: site["value"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    }


def unit_kl(guide_site: dict, model_site: dict) -> Tensor:
    """KL(q || p) for every latent unit of a site, with the sites' masks applied.

    Analytic where ``kl_divergence`` has a rule for the guide's and the model's
    distributions (stripped of ``.mask()`` and ``.to_event()``): a tensor of the site's
    batch shape followed by its event shape, e.g. ``[batch, time, z_dim]``.

    Otherwise the Monte Carlo estimate at the guide's draw z (``guide_site["value"]``),

        KL_{n,t} ≈ log q(z_{n,t} | ·) - log p(z_{n,t} | ·),

    summed over the event, one value per batch element and time step, of shape
    ``batch_shape + (1,) * event_dims``, e.g. ``[batch, time, 1]``: the same rank as the
    analytic result, so that sums over the trailing dims need no branch. z must be
    a reparameterised draw; the gradient is then the pathwise one that
    ``TraceMeanField_ELBO`` follows (:func:`kl_estimate` gives the others).

    Masked units are exactly 0 on both paths (on this one, a unit masked in the guide
    or in the model). The site's ``scale`` (from ``poutine.scale`` or subsampling) is
    *not* applied: free bits compare unscaled KLs with λ.
    """
    return kl_estimate(guide_site, model_site, "pathwise")


def kl_estimate(
    guide_site: dict, model_site: dict, gradient: str, values: Mapping[str, Tensor] | None = None
) -> Tensor:
    """:func:`unit_kl`'s KL, estimated as ``gradient`` says where it is sampled, value and
    gradient both the estimator's own (so that free bits weigh the very estimate whose
    gradient they scale):

    - ``"pathwise"``: log q(z) - log p(z), :func:`unit_kl` itself;
    - ``"stl"``: log q_{sg(φ)}(z) - log p(z), the guide's density with its parameters
      stopped (:func:`pyro_stcn.inference.stopped.stopped_log_prob`, given the guide's latent
      ``values``): the same number, rounding aside, with sticking the landing's gradient;
    - ``"control-variate"``: :func:`control_variate_kl` where it applies, else ``"stl"``.

    Analytic KLs are the same under every estimator.
    """
    q, q_masks, event_dims = _unwrap(guide_site["fn"])
    p, p_masks, _ = _unwrap(model_site["fn"])
    try:
        kl = kl_divergence(q, p)
    except NotImplementedError:
        if not q.has_rsample:
            raise ValueError(
                f"site {model_site['name']!r}: no analytic KL between the guide's {type(q).__name__} and the "
                f"model's {type(p).__name__}, and the Monte Carlo KL needs a reparameterised guide "
                "distribution (has_rsample), which this is not"
            ) from None
        return _monte_carlo_kl(guide_site, model_site, gradient, values)
    return _apply_masks(kl, q_masks + p_masks + [(guide_site["mask"], 0)], event_dims)


def _monte_carlo_kl(guide_site: dict, model_site: dict, gradient: str, values: Mapping[str, Tensor] | None) -> Tensor:
    """A sampled KL per batch element, ``batch_shape + (1,) * event_dims`` (:func:`kl_estimate`)."""
    # The distributions' own masks are applied by their log_prob (or control_variate_kl); the sites' here.
    kl = control_variate_kl(guide_site, model_site) if gradient == "control-variate" else None
    if kl is None:
        log_q = _log_density(guide_site)
        if gradient != "pathwise":
            if values is None:
                raise ValueError(f"site {guide_site['name']!r}: sticking the landing needs the guide's latent values")
            log_q = stopped_log_prob(guide_site, values)
        kl = log_q - _log_density(model_site)
    kl = _apply_masks(kl, [(guide_site["mask"], 0), (model_site["mask"], 0)], 0)
    event_dims = guide_site["fn"].event_dim
    return kl.reshape(kl.shape + (1,) * event_dims)


def control_variate_kl(guide_site: dict, model_site: dict) -> Tensor | None:
    """KL(q || p) at the guide's draw z, with its closed-form part in closed form:

        KL(q || p) = KL(q₀ || p̃) + E[log p̃(ε) - log p(z) - log abs(det ∂z/∂ε)],   z = f(ε), ε ~ q₀,

    which holds for any p̃. Here q₀ is the guide's base (q = f#q₀ for a flow f; q itself,
    f the identity, otherwise) and p̃ a stand-in for p with a closed-form KL from q₀: p
    itself where torch has the rule (a flow over a Gaussian against a Gaussian prior),
    else, for a mixture of diagonal Gaussians, the Gaussian with its mean and variance.
    Only the second term is sampled, and it is 0 where f is the identity and p = p̃, so
    its noise is the flow's departure from its base and the mixture's from a Gaussian:
    the flow guide, which starts at the identity, starts with exactly the Gaussian
    guide's KL gradient. Unbiased; per batch element, the distributions' masks applied
    (not the sites'). None where it does not apply: then sticking the landing serves.
    """
    q, q_masks = _without_masks(guide_site["fn"])
    p, p_masks = _without_masks(model_site["fn"])
    base, flow = (q.base_dist, q.transforms) if isinstance(q, TransformedDistribution) else (q, [])
    for stand_in in filter(None, (p, _moments(p))):
        try:
            base_kl = kl_divergence(base, stand_in)
            break
        except NotImplementedError:
            continue
    else:
        return None
    if base_kl.shape != q.batch_shape or base.event_shape != q.event_shape:
        return None
    z = y = guide_site["value"]
    log_det = 0.0
    for transform in reversed(flow):  # the draw's own ε and Jacobians, cached by the flow
        x = transform.inv(y)
        log_det = log_det + _sum_last(transform.log_abs_det_jacobian(x, y), q.event_dim - transform.domain.event_dim)
        y = x
    estimate = base_kl + stand_in.log_prob(y) - p.log_prob(z) - log_det
    return _apply_masks(estimate, q_masks + p_masks, 0)


def _without_masks(fn) -> tuple:
    """A site's distribution without its outer ``.mask()`` wrappers, and those masks
    (each with 0 event dims outside it, as :func:`_apply_masks` takes them)."""
    masks = []
    while isinstance(fn, MaskedDistribution):
        masks.append((fn._mask, 0))
        fn = fn.base_dist
    return fn, masks


def _moments(p) -> Independent | None:
    """The diagonal Gaussian with the mean and variance of ``p``, a mixture of diagonal
    Gaussians (``MixtureSameFamily`` of ``Normal(...).to_event(1)``); None for others."""
    if not isinstance(p, MixtureSameFamily):
        return None
    components, masks, event_dims = _unwrap(p.component_distribution)
    if not isinstance(components, Normal) or masks or event_dims != 1:
        return None
    weights = p.mixture_distribution.probs.unsqueeze(-1)  # [..., K, 1]
    mean = (weights * components.loc).sum(-2)
    variance = (weights * (components.scale**2 + (components.loc - mean.unsqueeze(-2)) ** 2)).sum(-2)
    return Independent(Normal(mean, variance.sqrt()), 1)


def _sum_last(t: Tensor, dims: int) -> Tensor:
    return t.sum(tuple(range(-dims, 0))) if dims else t


def per_dimension(kl: Tensor, event_shape: torch.Size) -> Tensor:
    """A site's KL per latent dimension, ``batch_shape + event_shape``: an analytic KL as
    it is; a Monte Carlo estimate of a whole vector (``[..., 1]``) shared equally among
    the vector's dimensions, so that free bits count the same unit for every site."""
    if kl.shape[kl.dim() - len(event_shape) :] == event_shape:
        return kl
    return (kl / event_shape.numel()).expand(kl.shape[: kl.dim() - len(event_shape)] + event_shape)
