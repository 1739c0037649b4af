"""Observation models p(x_t | ·) as heads that map features to Pyro distributions.

Each head takes output features ``[batch, time, hidden]`` and returns a distribution
with batch shape ``[batch, time]`` and event shape ``[x_dim]``, whose ``log_prob`` and
``sample`` agree. Observation scales are ``softplus`` clamped to
[``heads.SCALE_MIN``, ``heads.SCALE_MAX``] = [1e-3, 5] in the units the model sees.

References:
    - [1] Graves, "Generating Sequences With Recurrent Neural Networks", 2013
      (pen Bernoulli × mixture over pen offsets).
"""

import torch
from pyro import distributions as dist
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor, nn
from torch.distributions import constraints

from pyro_stcn.choices import choose
from pyro_stcn.nets import sampling
from pyro_stcn.nets.heads import bounded_softplus
from pyro_stcn.nets.pointwise import ChannelLinear


def diagonal_gmm(logits: Tensor, loc: Tensor, scale: Tensor) -> dist.MixtureSameFamily:
    """Σ_k π_k Π_d N(x_d; μ_kd, σ_kd): one component choice shared by all dims of x_t.

    logits: ``[..., K]``; loc, scale: ``[..., K, D]``.
    """
    components = dist.Normal(loc, scale).to_event(1)
    return dist.MixtureSameFamily(dist.Categorical(logits=logits), components)


class PenStroke(TorchDistribution):
    """Handwriting step x_t = (dx, dy, pen): a diagonal GMM over (dx, dy) times an
    independent Bernoulli pen-up bit (1 = the pen lifts after this point) [1]."""

    arg_constraints = {}
    support = constraints.independent(constraints.real, 1)
    has_rsample = False

    def __init__(self, offsets: dist.MixtureSameFamily, pen_logits: Tensor, validate_args=None):
        self.offsets = offsets
        self.pen = dist.Bernoulli(logits=pen_logits)
        super().__init__(offsets.batch_shape, torch.Size([3]), validate_args=validate_args)

    def expand(self, batch_shape: torch.Size, _instance=None) -> "PenStroke":
        batch_shape = torch.Size(batch_shape)
        return PenStroke(self.offsets.expand(batch_shape), self.pen.logits.expand(batch_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        return self.offsets.log_prob(value[..., :2]) + self.pen.log_prob(value[..., 2])

    def sample(self, sample_shape: torch.Size = ()) -> Tensor:
        offsets = self.offsets.sample(sample_shape)
        return torch.cat([offsets, self.pen.sample(sample_shape).unsqueeze(-1)], dim=-1)


class Likelihood(nn.Module):
    """A linear 1x1 head from features to the parameters of p(x_t | ·).

    A subclass gives the parameters by :meth:`params`, the distribution by ``forward``
    and, for generation, a draw by :meth:`sample` with the same numbers as
    ``forward(h).sample()`` but no distribution object (:mod:`pyro_stcn.nets.sampling`)."""

    def __init__(self, in_dim: int, x_dim: int, num_params: int):
        super().__init__()
        self.x_dim = x_dim
        self.proj = ChannelLinear(in_dim, num_params)

    def sample(self, h: Tensor) -> Tensor:
        """A draw of x_t ``[batch, time, x_dim]`` given features ``h``."""
        return self(h).sample()


class BernoulliLikelihood(Likelihood):
    """Independent Bernoulli over the dims of x_t, for binary data."""

    def __init__(self, in_dim: int, x_dim: int):
        super().__init__(in_dim, x_dim, x_dim)

    def params(self, h: Tensor) -> tuple[Tensor]:
        return (self.proj(h),)

    def forward(self, h: Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=self.proj(h)).to_event(1)

    def sample(self, h: Tensor) -> Tensor:
        return sampling.bernoulli(self.proj(h))


class GaussianLikelihood(Likelihood):
    """Diagonal Gaussian over the dims of x_t."""

    def __init__(self, in_dim: int, x_dim: int):
        super().__init__(in_dim, x_dim, 2 * x_dim)

    def params(self, h: Tensor) -> tuple[Tensor, Tensor]:
        loc, raw_scale = self.proj(h).chunk(2, dim=-1)
        return loc, bounded_softplus(raw_scale)

    def forward(self, h: Tensor) -> dist.TorchDistribution:
        return dist.Normal(*self.params(h)).to_event(1)

    def sample(self, h: Tensor) -> Tensor:
        return sampling.normal(*self.params(h))


class GMMLikelihood(Likelihood):
    """Diagonal GMM with K components and one component choice shared across dims."""

    def __init__(self, in_dim: int, x_dim: int, components: int = 20):
        super().__init__(in_dim, x_dim, components * (1 + 2 * x_dim))
        self.components = components

    def params(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Logits ``[..., K]``, locs and scales ``[..., K, x_dim]``."""
        k, d = self.components, self.x_dim
        params = self.proj(h)
        logits = params[..., :k]
        loc, raw_scale = params[..., k:].unflatten(-1, (k, 2 * d)).chunk(2, dim=-1)
        return logits, loc, bounded_softplus(raw_scale)

    def forward(self, h: Tensor) -> dist.TorchDistribution:
        return diagonal_gmm(*self.params(h))

    def sample(self, h: Tensor) -> Tensor:
        return sampling.diagonal_gmm(*self.params(h))


class HandwritingLikelihood(Likelihood):
    """Pen Bernoulli × K-component diagonal GMM over (dx, dy); x_t = (dx, dy, pen)."""

    def __init__(self, in_dim: int, x_dim: int = 3, components: int = 20):
        if x_dim != 3:
            raise ValueError(f"the handwriting likelihood needs x_dim = 3 (dx, dy, pen), got {x_dim}")
        super().__init__(in_dim, x_dim, 1 + components * 5)
        self.components = components

    def params(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The mixture's logits ``[..., K]``, locs and scales ``[..., K, 2]``, and the pen's logit ``[...]``."""
        k = self.components
        params = self.proj(h)
        pen_logits, logits = params[..., 0], params[..., 1 : 1 + k]
        loc, raw_scale = params[..., 1 + k :].unflatten(-1, (k, 4)).chunk(2, dim=-1)
        return logits, loc, bounded_softplus(raw_scale), pen_logits

    def forward(self, h: Tensor) -> dist.TorchDistribution:
        logits, loc, scale, pen_logits = self.params(h)
        return PenStroke(diagonal_gmm(logits, loc, scale), pen_logits)

    def sample(self, h: Tensor) -> Tensor:
        logits, loc, scale, pen_logits = self.params(h)  # offsets first, then the pen, as PenStroke.sample
        return torch.cat([sampling.diagonal_gmm(logits, loc, scale), sampling.bernoulli(pen_logits)[..., None]], dim=-1)


LIKELIHOODS = {
    "bernoulli": BernoulliLikelihood,
    "gaussian": GaussianLikelihood,
    "gmm": GMMLikelihood,
    "handwriting": HandwritingLikelihood,
}
# The likelihoods that can model data for which a loader names ``key``: binary images
# take a Bernoulli, (dx, dy, pen) the pen model; real values a Gaussian or a GMM.
SUITABLE = {
    "bernoulli": ["bernoulli"],
    "handwriting": ["handwriting"],
    "gaussian": ["gaussian", "gmm"],
    "gmm": ["gmm", "gaussian"],
}


def make_likelihood(name: str, in_dim: int, x_dim: int, components: int) -> Likelihood:
    """The likelihood head called ``name``; ``components`` applies to the mixtures
    (gmm, handwriting). A clear error lists the valid names."""
    likelihood = choose(LIKELIHOODS, name, "likelihood")
    if likelihood in (GMMLikelihood, HandwritingLikelihood):
        return likelihood(in_dim, x_dim, components=components)
    return likelihood(in_dim, x_dim)


PRINTED = {  # the names tables print
    "bernoulli": "Bernoulli",
    "gaussian": "Gaussian",
    "gmm": "GMM",
    "handwriting": "pen Bernoulli × GMM",
}
