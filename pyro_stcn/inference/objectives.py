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
  KL(q || p) = KL(q₀ || p̃) + E[log p̃(ε) - log p(z) - log abs(det ∂z/∂ε)], with q₀ the
  guide's Gaussian base (below its flow) and p̃ the prior or, for a mixture prior, its
  moment-matched Gaussian; only the remainder is sampled (:func:`control_variate_kl`).
  Where no such pair exists, sticking the landing;
- ``"stl"``, sticking the landing [5]: the gradient of log q_{sg(φ)}(z) - log p(z), the
  guide's density with its parameters stopped (:mod:`pyro_stcn.inference.stopped`), so the
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
    - [1] Aksan & Hilliges, "STCN", ICLR 2019.
    - [2] Andersson, Wahlström & Schön, "MS-STCN", 2021, appendix A.
    - [3] Kingma et al., "Improved Variational Inference with Inverse Autoregressive
      Flow", NeurIPS 2016 (free bits).
    - [4] Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
    - [5] Roeder, Wu & Duvenaud, "Sticking the Landing", NeurIPS 2017.
    - [6] Tucker, Lawson, Gu & Maddison, "Doubly Reparameterized Gradient Estimators for
      Monte Carlo Objectives", ICLR 2019.
"""


import torch
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.util import torch_item
from torch import Tensor

from pyro_stcn.inference.kl import kl_estimate, latent_values, layer_of, per_dimension, unit_kl


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
