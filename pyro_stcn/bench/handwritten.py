"""Hand-written PyTorch losses of STCN-dense (ladder guide) and MS-STCN (independent
guide): the benchmark's yardstick for what Pyro's tracing costs.

Each runs the same networks as the Pyro model and guide, with no Pyro at all: the
trunk (or bottom-up pass) once, each prior once, the posterior drawn top-down with
the guide's own draws (same order, same random numbers as ``Normal.rsample``), the
KL analytic, then the observation's log-density (paper 1, eq. 14-17):

    -ELBO = -Σ_t log p(x_t | z_t) + Σ_l Σ_t KL(q(z^l_t | ·) || p(z^l_t | ·))

Each returns ``(value, surrogate)`` as :class:`pyro_stcn.inference.objectives.LayerwiseELBO` does:
the true -ELBO, and the term whose gradient the objective follows (its
``kl_surrogate`` of the per-unit KLs). With one seed they give the same numbers as
``objective.differentiable_loss(model.model, guide, x, mask)`` (tests/test_bench.py).
"""

import torch
from torch import Tensor
from torch.distributions import Normal, kl_divergence

from pyro_stcn.guides.independent import MultiscaleIndependentGuide
from pyro_stcn.guides.ladder import LadderGuide, precision_weighted
from pyro_stcn.inference.objectives import LayerwiseELBO
from pyro_stcn.models.ms_stcn import MSSTCN, delay
from pyro_stcn.models.stcn import STCN
from pyro_stcn.nets.heads import join
from pyro_stcn.nets.masks import zero_padding


def _rsample(loc: Tensor, scale: Tensor) -> Tensor:
    """z = μ + ε σ with ε drawn exactly as ``Normal(loc, scale).rsample()`` draws it."""
    return loc + torch.empty_like(loc).normal_() * scale


def _masked_kl(loc_q: Tensor, scale_q: Tensor, loc_p: Tensor, scale_p: Tensor, mask: Tensor) -> Tensor:
    """Per-unit KL(q || p), ``[batch, time, z]``, zero on padded steps."""
    return torch.where(mask[..., None], kl_divergence(Normal(loc_q, scale_q), Normal(loc_p, scale_p)), 0.0)


def stcn_ladder_loss(model: STCN, guide: LadderGuide, objective: LayerwiseELBO, x: Tensor, mask: Tensor):
    """(-ELBO, surrogate) of STCN(-dense) with the ladder guide, one particle."""
    feats = model.trunk(model.units.normalise(x), mask)
    zs, z_above = [], None
    kl_total, kl_objective = 0.0, 0.0
    for layer in reversed(range(model.layers)):
        loc_p, scale_p = model.prior.gaussian(layer, join(feats.d_prev[layer], z_above))
        loc_hat, scale_hat = guide.estimate[layer](join(feats.d_cur[layer], z_above))
        loc_q, scale_q = precision_weighted(loc_hat, scale_hat, loc_p, scale_p)
        z_above = _rsample(loc_q, scale_q)
        zs.insert(0, z_above)
        kl = _masked_kl(loc_q, scale_q, loc_p, scale_p, mask)
        kl_total = kl_total + kl.sum()
        kl_objective = kl_objective + objective.kl_surrogate(kl)
    log_lik = torch.where(mask, model.observation(zs).log_prob(zero_padding(x, mask)), 0.0).sum()
    return -(log_lik - kl_total), -(log_lik - kl_objective)


def ms_stcn_independent_loss(
    model: MSSTCN, guide: MultiscaleIndependentGuide, objective: LayerwiseELBO, x: Tensor, mask: Tensor
):
    """(-ELBO, surrogate) of MS-STCN with the independent guide, one particle."""
    feats = model.bottom_up_features(x, mask)
    g, kl_total, kl_objective = None, 0.0, 0.0
    for l in reversed(range(model.layers)):
        h = model.h_of(l, g, delay(feats.d[l]))
        h_t = h.transpose(-1, -2)
        loc_q, scale_q = guide.posterior(l, h_t, feats)
        z = _rsample(loc_q, scale_q)
        kl = _masked_kl(loc_q, scale_q, *model.prior.gaussian(l, h_t), feats.masks[l])
        kl_total = kl_total + kl.sum()
        kl_objective = kl_objective + objective.kl_surrogate(kl)
        g = model.g_of(l, h, z)
    log_lik = torch.where(feats.mask, model.observation(g).log_prob(feats.x), 0.0).sum()
    return -(log_lik - kl_total), -(log_lik - kl_objective)
