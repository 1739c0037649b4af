"""ELBOs whose KL term is reshaped for optimisation but reported truthfully.

All of these are :class:`~pyro.infer.TraceMeanField_ELBO` with the KL kept per
latent unit (layer, time step, dimension). The value they return is always the
true negative ELBO

    -ELBO = -Σ_t E_q[log p(x_t | z_t)] + Σ_l Σ_t E_q[KL(q(z^l_t | ·) || p(z^l_t | ·))]

(paper 1, eq. 14-17); only the surrogate whose gradient is followed changes:

- :class:`AnnealedELBO`:        β · KL, with β ≥ 0 (paper 1; β = 0 allowed, which
  ``poutine.scale`` refuses);
- :class:`FreeBitsELBO`:        Σ_i max(KL_i, λ);
- :class:`LinearFreeBitsELBO`:  Σ_i KL_i if KL_i ≥ λ else KL_i · sg(KL_i) / λ
  (paper 2, eq. A.3; sg = stop-gradient);
- :class:`ImportanceWeightedELBO`: the importance-weighted bound with K draws of each
  factor of the latents (each step in STCN; Burda et al. 2016), whose value is the
  Monte Carlo -ELBO from the same draws, and whose guide gradient is by default the
  doubly reparameterised one (DReG [6]).

Where ``kl_divergence`` has no rule for a site's pair of distributions (a flow guide,
a mixture prior, any non-Gaussian latent), its KL is the one-sample Monte Carlo
estimate log q(z) - log p(z) at the guide's reparameterised draw z, one value per
batch element and time step (summed over the event), as ``TraceMeanField_ELBO``
does (:func:`unit_kl`). Its gradient is chosen by ``kl_gradient``:

- ``"control-variate"`` (the default): the closed-form part of the KL in closed form,
  KL(q || p) = KL(q₀ || p̃) + E[log p̃(ε) - log p(z) - log |det ∂z/∂ε|], with q₀ the
  guide's Gaussian base (below its flow) and p̃ the prior or, for a mixture prior, its
  moment-matched Gaussian; only the remainder is sampled (:func:`control_variate_kl`).
  Where no such pair exists, sticking the landing;
- ``"stl"``, sticking the landing [5]: the gradient of log q_{sg(φ)}(z) - log p(z), the
  guide's density with its parameters stopped (:mod:`pyro_stcn.stopped`), so the
  score term ∂_φ log q_φ(z)|_z, zero in mean but not in variance, is dropped;
  unbiased, and zero when q = p;
- ``"pathwise"``: the full pathwise gradient, ``TraceMeanField_ELBO``'s.

Measured on the digits (README, "Low-variance KL gradients"): with the pathwise gradient
a mixture prior trained to worse than independent pixels; sticking the landing fixed
that but left both it and the flow guide behind the Gaussians they generalise, and the
same Gaussian guide lost 1.6 nats per image when its KL was sampled rather than closed
form. The control variate keeps what is in closed form in closed form.

The reported value is log q(z) - log p(z) in every case, to the bit (:func:`unit_kl`).
Annealing and free bits act on the estimate the gradient comes from, its value and
gradient together (:func:`kl_estimate`: free bits weighing the plain estimate while
scaling the control variate's gradient made the flow guide's KL run away to 10^6
nats), in the unit of analytic KLs: one value per latent dimension, a sampled
estimate of a whole z^l_t vector shared equally among its dimensions
(:func:`per_dimension`), so λ is nats per latent dimension for every guide and prior.

β and λ are plain attributes, set by the training loop from a schedule. After each
evaluation ``self.kl`` holds the KL of each latent layer (nats, summed over batch,
time and dimensions) from the last particle, for logging: a detached 0-dim float64
tensor per layer, on the device, so that recording it reads nothing back to the host
(``float(...)`` it to print). A layer is a site, unless the model groups sites (one
per step, as the VRNN's) with ``infer={"layer": name}``.

:meth:`LayerwiseELBO.differentiable_loss` synchronises nothing with the device: its
value and gradient are Pyro's, but the value stays a tensor (Pyro's reads the
surrogate back to the host and tests it for NaN, twice per step). ``loss`` and
``loss_and_grads`` are Pyro's, and return Python floats.

References:
    [1] Aksan & Hilliges, "STCN", ICLR 2019.
    [2] Andersson, Wahlström & Schön, "MS-STCN", 2021, appendix A.
    [3] Kingma et al., "Improved Variational Inference with Inverse Autoregressive
        Flow", NeurIPS 2016 (free bits).
    [4] Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
    [5] Roeder, Wu & Duvenaud, "Sticking the Landing", NeurIPS 2017.
    [6] Tucker, Lawson, Gu & Maddison, "Doubly Reparameterized Gradient Estimators for
        Monte Carlo Objectives", ICLR 2019.
"""

import math
from collections.abc import Mapping

import torch
from pyro import poutine
from pyro.distributions.torch_distribution import MaskedDistribution
from pyro.distributions.util import scale_and_mask
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.trace_mean_field_elbo import _check_mean_field_requirement
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.poutine.replay_messenger import ReplayMessenger
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from pyro.util import check_if_enumerated, check_model_guide_match, check_site_shape
from torch import Tensor
from torch.distributions import Independent, MixtureSameFamily, Normal, TransformedDistribution, kl_divergence

from pyro_stcn.choices import choose
from pyro_stcn.factors import factor_steps_of, trace_log_weights
from pyro_stcn.stopped import stopped_log_prob


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
      stopped (:func:`pyro_stcn.stopped.stopped_log_prob`, given the guide's latent
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

        KL(q || p) = KL(q₀ || p̃) + E[log p̃(ε) - log p(z) - log |det ∂z/∂ε|],   z = f(ε), ε ~ q₀,

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


class LayerwiseELBO(TraceMeanField_ELBO):
    """``TraceMeanField_ELBO`` with per-site KL records; the base of the others.

    Subclasses override :meth:`kl_surrogate` to change the gradient of the KL term.
    With the default (the KL itself) its value is ``TraceMeanField_ELBO``'s, and so is
    its gradient with ``kl_gradient="pathwise"`` or where every KL is analytic.

    ``kl_gradient`` is the gradient of Monte Carlo KLs: ``"control-variate"`` (the
    default), ``"stl"`` or ``"pathwise"`` (see the module's docstring and :func:`unit_kl`).
    """

    kl_gradients = ("control-variate", "stl", "pathwise")  # the first is the default

    def __init__(self, *, kl_gradient: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.kl_gradient = self.kl_gradients[0] if kl_gradient is None else kl_gradient
        if self.kl_gradient not in self.kl_gradients:
            raise ValueError(
                f"{type(self).__name__} takes kl_gradient {' or '.join(map(repr, self.kl_gradients))}, "
                f"got {kl_gradient!r}"
            )

    def kl_surrogate(self, kl: Tensor) -> Tensor:
        """The term whose gradient stands in for ∇ Σ_i KL_i, from per-unit KLs."""
        return kl.sum()

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        """The mean over particles of the true -ELBO as value, with the gradient of the
        mean surrogate:

            loss + (surrogate - sg(surrogate))        (sg = stop-gradient),

        the value and gradient of ``Trace_ELBO.differentiable_loss``, to the bit, without
        its host synchronisations (``torch_item`` and ``warn_if_nan``, which tests a
        tensor in Python). The loss is averaged in float64, as Pyro's Python floats are.
        So a NaN loss is not warned about here: the trainer's divergence guard counts it.
        It calls :meth:`_loss_and_surrogate`, not Pyro's ``_differentiable_loss_particle``
        hook (which ``loss`` and ``loss_and_grads`` still use): a subclass changes the
        objective through :meth:`kl_surrogate` or :meth:`_loss_and_surrogate`.
        """
        loss, surrogate = 0.0, 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss_particle, surrogate_particle = self._loss_and_surrogate(model_trace, guide_trace)
            surrogate = surrogate + surrogate_particle / self.num_particles
            loss = loss + loss_particle.double() / self.num_particles
        return loss.to(surrogate.dtype) + (surrogate - surrogate.detach())

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        # Pyro's loss() and loss_and_grads() take the particle's loss as a float.
        loss, surrogate = self._loss_and_surrogate(model_trace, guide_trace)
        return torch_item(loss), surrogate

    def _loss_and_surrogate(self, model_trace, guide_trace) -> tuple[Tensor, Tensor]:
        """One particle's -ELBO (detached) and surrogate, and ``self.kl`` recorded."""
        log_lik, kl_total, kl_objective = 0.0, 0.0, 0.0
        self.kl = {}
        values = latent_values(guide_trace) if self.kl_gradient != "pathwise" else None
        for name, model_site in model_trace.nodes.items():
            if model_site["type"] != "sample":
                continue
            if model_site["is_observed"]:
                log_lik = log_lik + model_site["log_prob_sum"]
                continue
            guide_site = guide_trace.nodes[name]
            kl = unit_kl(guide_site, model_site)  # the value reported, to the bit whatever the gradient
            kl_sum = guide_site["scale"] * kl.sum()
            layer = layer_of(model_site)
            self.kl[layer] = self.kl.get(layer, 0.0) + kl_sum.detach().double()
            kl_total = kl_total + kl_sum
            estimate = kl if values is None else kl_estimate(guide_site, model_site, self.kl_gradient, values)
            units = per_dimension(estimate, guide_site["fn"].event_shape)
            kl_objective = kl_objective + guide_site["scale"] * self.kl_surrogate(units)
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and name not in model_trace.nodes:
                raise ValueError(f"guide site {name!r} has no matching model site")
        loss = -(log_lik - kl_total)
        surrogate = -(log_lik - kl_objective)
        return loss.detach(), surrogate


class AnnealedELBO(LayerwiseELBO):
    """KL annealing: the gradient follows ``-E[log p(x|z)] + β · KL`` (β ≥ 0)."""

    def __init__(self, beta: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.beta = beta

    def kl_surrogate(self, kl: Tensor) -> Tensor:
        return self.beta * kl.sum()


class FreeBitsELBO(LayerwiseELBO):
    """Free bits [3]: the gradient follows ``Σ_i max(KL_i, λ)`` per latent unit."""

    def __init__(self, lam: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.lam = lam

    def kl_surrogate(self, kl: Tensor) -> Tensor:
        return kl.clamp(min=self.lam).sum()


class LinearFreeBitsELBO(LayerwiseELBO):
    """Linear free bits [2, eq. A.3]: below λ a unit's KL gradient is scaled by KL_i/λ.

    ``KL_i · sg(KL_i) / λ`` equals KL_i at λ, so the objective is continuous, and
    its gradient ``∇KL_i · KL_i / λ`` fades as KL_i → 0 instead of vanishing at once.
    λ = 0 gives the plain ELBO.

    The weight sg(KL_i)/λ is clamped at 0 from below. An analytic KL is never
    negative, so this changes nothing there; a Monte Carlo estimate log q(z) - log p(z)
    often is, and a negative weight would push that unit's divergence *up* (measured:
    an IAF guide on the digits then reached a KL of 387 nats per image in 150 steps,
    against 1.0 with the plain ELBO).
    """

    def __init__(self, lam: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.lam = lam

    def kl_surrogate(self, kl: Tensor) -> Tensor:
        if self.lam <= 0:
            return kl.sum()
        below = kl * kl.detach().clamp(min=0) / self.lam
        return torch.where(kl >= self.lam, kl, below).sum()


class ImportanceWeightedELBO(LayerwiseELBO):
    """Training on the factorised importance-weighted bound [4] (:mod:`pyro_stcn.factors`):

        log p(x) ≥ Σ_f log (1/K) Σ_k w_{k,f},   w_{k,f} = p(x_f, z^(k)_f | x_{<f}) / q(z^(k)_f | x),

    with K = ``samples`` draws of each factor (in STCN, each step), made at once as
    Pyro's vectorized particles: the trunk runs once and its features, ``[batch, time,
    C]``, broadcast against z ``[K, batch, time, z]``, so only the latent and output
    heads see K draws. The value is the -ELBO estimated from the same draws,
    -(1/K) Σ_k Σ_f log w_{k,f}, and ``self.kl`` the KL of each layer averaged over them.

    The gradient, with w̃_{k,f} = w_{k,f} / Σ_j w_{j,f} the normalised weights of factor f:

    - ``kl_gradient="dreg"`` (the default), doubly reparameterised [6]: the guide's own
      parameters φ (the param sites of the guide's trace) follow
      Σ_{k,f} w̃_{k,f}² ∂_z log w_{k,f} · ∂z/∂φ, with log w read with the guide's
      parameters stopped (:mod:`pyro_stcn.stopped`); the model's parameters, those it
      shares with the guide included (the trunk, a ladder guide's prior), follow the
      bound's own gradient. The plain gradient's signal-to-noise ratio for the guide
      falls as K grows (Rainforth et al., ICML 2018); this one's does not. (Followed by
      the model's parameters too, the path term's 1/σ_q blows up where the posterior
      is nearly deterministic, as STCN's collapsed layers are: measured, its spread
      was 300-300,000 times the plain gradient's.)
    - ``"pathwise"``: the reparameterised gradient of the bound, Σ_{k,f} w̃_{k,f} ∇ log w_{k,f}.

    DReG takes two backward passes inside :meth:`differentiable_loss` (one per group of
    parameters) and returns the -ELBO with a surrogate whose gradient is theirs. For the
    guide's pass the model reads each draw through an identity whose backward multiplies
    by that draw's w̃ (known once the forward pass is done), so that the paths through z
    are weighted w̃ · w̃.

    The model (or the module whose ``model`` method it is) must say ``factor_steps``,
    and draw particles in parallel; otherwise the objective refuses with the reason.
    """

    kl_gradients = ("dreg", "pathwise")

    def __init__(self, samples: int = 5, **kwargs):
        if not isinstance(samples, int) or samples < 1:
            raise ValueError(f"the importance-weighted objective needs a positive number of samples, got {samples!r}")
        super().__init__(num_particles=samples, vectorize_particles=True, max_plate_nesting=2, **kwargs)
        self.factor_steps = None
        self._weights: dict[str, Tensor | None] = {}

    def _get_traces(self, model, guide, args, kwargs):
        self.factor_steps = factor_steps_of(model)
        if self.factor_steps is None:
            raise ValueError(
                "the importance-weighted objective weights each factor of the latents on its own, but this model's "
                "latents do not factorise over time given x (it says factor_steps = None, or nothing); train it on "
                "another objective"
            )
        try:
            yield from super()._get_traces(model, guide, args, kwargs)
        except NotImplementedError as e:
            raise ValueError(
                f"the importance-weighted objective draws its {self.num_particles} samples in parallel "
                f"(vectorized particles), which this model cannot: {e}"
            ) from None

    def _get_trace(self, model, guide, args, kwargs):
        """Pyro's trace pair (``get_importance_trace``), except that under DReG the model
        replays the guide's draws through :class:`_WeightedReplay`."""
        if self.kl_gradient == "pathwise":
            return super()._get_trace(model, guide, args, kwargs)
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        self._weights = {"w": None}  # this evaluation's own: a later one must not change its backward
        replay = _WeightedReplay(guide_trace, self._weights)
        model_trace = poutine.trace(replay(model)).get_trace(*args, **kwargs)
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
        guide_trace, model_trace = prune_subsample_sites(guide_trace), prune_subsample_sites(model_trace)
        model_trace.compute_log_prob()
        guide_trace.compute_log_prob()
        if is_validation_enabled():
            for trace in (model_trace, guide_trace):
                for site in trace.nodes.values():
                    if site["type"] == "sample":
                        check_site_shape(site, self.max_plate_nesting)
            check_if_enumerated(guide_trace)
            _check_mean_field_requirement(model_trace, guide_trace)
        return model_trace, guide_trace

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        """The -ELBO estimate as value; the gradient of the bound (``"pathwise"``) or
        DReG's for the guide's parameters and the bound's for the model's (``"dreg"``)."""
        if self.kl_gradient == "pathwise":
            return super().differentiable_loss(model, guide, *args, **kwargs)
        ((model_trace, guide_trace),) = self._get_traces(model, guide, args, kwargs)
        loss, surrogate = self._loss_and_surrogate(model_trace, guide_trace)
        guide_params = _params(guide_trace)
        model_params = [p for p in _params(model_trace) if all(p is not q for q in guide_params)]
        weights, self._weights["w"] = self._weights["w"], None  # the model's pass: the bound's own gradient
        grads = torch.autograd.grad(surrogate, model_params, retain_graph=True, allow_unused=True)
        self._weights["w"] = weights  # the guide's pass: paths through z weighted w̃ · w̃
        grads += torch.autograd.grad(self._dreg_surrogate, guide_params, allow_unused=True)
        fixed = sum((p * g).sum() for p, g in zip(model_params + guide_params, grads) if g is not None)
        fixed = fixed / self.num_particles  # as Pyro divides each trace's terms
        return (loss.double() / self.num_particles).to(surrogate.dtype) + (fixed - fixed.detach())

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Pyro's ``SVI`` entry: the gradient of :meth:`differentiable_loss`, and its value."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return torch_item(loss)

    def _loss_and_surrogate(self, model_trace, guide_trace) -> tuple[Tensor, Tensor]:
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and not site["fn"].has_rsample:
                raise ValueError(f"guide site {name!r}: the importance-weighted objective needs reparameterised draws")
        particles = self.num_particles
        log_w = trace_log_weights(model_trace, guide_trace, self.factor_steps)  # [K, batch, F] ([batch, F] if K = 1)
        log_w = log_w.expand(particles, *log_w.shape[-2:])
        if self.kl_gradient == "dreg":
            weights = torch.softmax(log_w.detach(), dim=0)
            self._weights["w"] = weights  # read by the draws' backward (_WeightedReplay)
            values = latent_values(model_trace)  # the draws as the model read them
            log_q = {
                name: scale_and_mask(stopped_log_prob(site, values), site["scale"], site["mask"])
                for name, site in guide_trace.nodes.items()
                if name in values
            }
            log_w_stopped = trace_log_weights(model_trace, guide_trace, self.factor_steps, log_q)
            self._dreg_surrogate = -particles * (weights * log_w_stopped.expand_as(weights)).sum()
        self.kl = {}
        for name, model_site in model_trace.nodes.items():
            if model_site["type"] == "sample" and not model_site["is_observed"]:
                kl = guide_trace.nodes[name]["scale"] * unit_kl(guide_trace.nodes[name], model_site).sum()
                layer = layer_of(model_site)
                self.kl[layer] = self.kl.get(layer, 0.0) + kl.detach().double() / particles
        # Pyro divides each trace's terms by num_particles, and this one trace holds all K.
        return -log_w.sum().detach(), -particles * (log_w.logsumexp(0) - math.log(particles)).sum()


def _params(trace) -> list[Tensor]:
    """The parameters a trace read (its ``param`` sites: ``pyro.param``, ``pyro.module``)."""
    found = {}
    for site in trace.nodes.values():
        if site["type"] == "param" and site["value"].requires_grad:
            found.setdefault(id(site["value"]), site["value"])
    return list(found.values())


class _WeightedReplay(ReplayMessenger):
    """Pyro's replay, but each replayed latent reaches the model through an identity
    whose backward multiplies the gradient by its draw's normalised weight w̃_{k,f}
    (``weights["w"]``, ``[K, batch, F]``, set after the forward pass; None: by 1), step
    by step: a site of T_s steps gives each of the F factors T_s / F of them."""

    def __init__(self, trace, weights: dict[str, Tensor | None]):
        super().__init__(trace=trace)
        self.weights = weights

    def _pyro_sample(self, msg) -> None:
        super()._pyro_sample(msg)
        value = msg["value"]
        if msg["done"] and not msg["is_observed"] and value is not None and value.requires_grad:
            msg["value"] = value.view_as(value)
            msg["value"].register_hook(self._scale(msg["fn"].event_dim))

    def _scale(self, event_dim: int):
        def scale(grad: Tensor) -> Tensor:
            weights = self.weights["w"]
            if weights is None:
                return grad
            steps = grad.shape[grad.dim() - event_dim - 1]
            per_step = weights.repeat_interleave(steps // weights.shape[-1], dim=-1)
            per_step = per_step.reshape(grad.shape[: grad.dim() - event_dim])  # K = 1: no particle dim
            return grad * per_step[(...,) + (None,) * event_dim]

        return scale


OBJECTIVES = {
    "elbo": LayerwiseELBO,
    "annealed": AnnealedELBO,
    "free-bits": FreeBitsELBO,
    "linear-free-bits": LinearFreeBitsELBO,
    "iwae": ImportanceWeightedELBO,
}


def make_objective(name: str, **kwargs) -> LayerwiseELBO:
    """The objective called ``name``: elbo, annealed, free-bits, linear-free-bits or iwae
    (``samples`` K)."""
    return choose(OBJECTIVES, name, "objective")(**kwargs)
