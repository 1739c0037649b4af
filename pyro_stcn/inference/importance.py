"""Training on the factorised importance-weighted bound, with the DReG gradient.

References:
    - [1] Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
    - [2] Tucker, Lawson, Gu & Maddison, "Doubly Reparameterized Gradient Estimators for
      Monte Carlo Objectives", ICLR 2019.
    - [3] Rainforth et al., "Tighter Variational Bounds are Not Necessarily Better", ICML 2018.
"""

import math

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer.trace_mean_field_elbo import _check_mean_field_requirement
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.poutine.replay_messenger import ReplayMessenger
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_if_enumerated, check_model_guide_match, check_site_shape
from torch import Tensor

from pyro_stcn.inference.factors import factor_steps_of, trace_log_weights
from pyro_stcn.inference.kl import latent_values, layer_of, unit_kl
from pyro_stcn.inference.objectives import LayerwiseELBO
from pyro_stcn.inference.stopped import stopped_log_prob


class ImportanceWeightedELBO(LayerwiseELBO):
    """Training on the factorised importance-weighted bound [4] (:mod:`pyro_stcn.inference.factors`):

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
      parameters stopped (:mod:`pyro_stcn.inference.stopped`); the model's parameters, those it
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
