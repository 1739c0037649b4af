"""Where a model's latents factorise over time given x, and log weights per factor.

If, given x, the latents of consecutive blocks of S fine steps share no factor in
the model or the guide, then

    log p(x) = Σ_f log ∫ p(x_f, z_f | x_{<f}) dz_f,

one term per block f, and each block can be importance-weighted on its own: with K
draws z_f^(k) ~ q(z_f | x) per block,

    Σ_f log (1/K) Σ_k w_{k,f},    w_{k,f} = p(x_f, z_f^(k) | x_{<f}) / q(z_f^(k) | x),

is a lower bound on log p(x) (each factor's mean is unbiased for p(x_f | x_{<f}) and
the blocks' draws are independent), and never looser in expectation than K draws of
the whole sequence: the product of the blocks' means is the mean over all K^F
combinations of their draws, of which the sequence-level bound takes K (Burda et al.
2016, theorem 1, applied to that larger set).

STCN (paper 1): the prior at t reads d_{t-1}(x), the guide d_t(x), the output z_t alone,
so S = 1. MS-STCN (paper 2): the top-down networks are 1x1 and upsample within a block
of the coarsest layer, so S = Π_l s_l. VRNN: z_t feeds the recurrent state; the latents
do not factorise. A model says which by its attribute ``factor_steps`` (an int S, or
None where they do not factorise; a model without it counts as None).

References:
    - [1] Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
"""

from collections.abc import Callable, Mapping

from torch import Tensor


def factor_steps_of(model: Callable) -> int | None:
    """The model's ``factor_steps``: read off the model, or off the module whose method
    it is (``net.model``); None where neither says."""
    owner = getattr(model, "__self__", None)
    steps = getattr(model, "factor_steps", getattr(owner, "factor_steps", None))
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"factor_steps must be a positive int or None, got {steps!r}")
    return steps


def factor_label(factor_steps: int | None) -> str:
    """What a bound is importance-weighted over: "per step", "per block of 8 steps" or
    "per sequence" (``factor_steps`` None)."""
    if factor_steps is None:
        return "per sequence"
    return "per step" if factor_steps == 1 else f"per block of {factor_steps} steps"


def by_factor(log_prob: Tensor, factors: int, site: str) -> Tensor:
    """A site's log density ``[..., batch, T_s]`` summed within each factor: ``[..., batch,
    factors]``. Factor f holds the site's steps f T_s / F .. (f + 1) T_s / F - 1, which
    for a coarse layer are the coarse steps that cover the factor's fine steps."""
    if log_prob.dim() < 2:
        raise ValueError(
            f"site {site!r}: log density of shape {tuple(log_prob.shape)}; expected [batch, time] (the batch "
            "plate at dim -2, a time plate at dim -1)"
        )
    steps = log_prob.shape[-1]
    if steps % factors:
        raise ValueError(f"site {site!r} has {steps} time steps, which do not split into the {factors} factors")
    return log_prob.reshape(*log_prob.shape[:-1], factors, steps // factors).sum(-1)


def trace_log_weights(
    model_trace, guide_trace, factor_steps: int | None, guide_log_prob: Mapping[str, Tensor] | None = None
) -> Tensor:
    """log p(x_f, z_f | x_{<f}) - log q(z_f | x) of each factor f, ``[..., batch, F]``,
    from a guide trace and the model trace replayed against it, both with ``log_prob``
    computed (masked steps are 0). F = ceil(T / ``factor_steps``) for the longest site's
    T (the finest resolution; MS-STCN pads T to whole blocks); 1 for None, the whole
    sequence. ``guide_log_prob`` replaces the log q of the guide sites it names (the
    stopped densities of :mod:`pyro_stcn.inference.stopped`)."""
    replaced = guide_log_prob or {}
    sites = [
        (sign, name, replaced.get(name, site["log_prob"]) if sign < 0 else site["log_prob"])
        for sign, trace in ((1.0, model_trace), (-1.0, guide_trace))
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
    ]
    time = max((log_prob.shape[-1] for _, _, log_prob in sites if log_prob.dim() >= 1), default=1)
    factors = 1 if factor_steps is None else -(-time // factor_steps)
    return sum(sign * by_factor(log_prob, factors, name) for sign, name, log_prob in sites)
