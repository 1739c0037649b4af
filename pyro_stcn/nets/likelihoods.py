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
from pyro_stcn.nets.heads import bounded_softplus


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
    """A linear 1x1 head from features to the parameters of p(x_t | ·)."""

    def __init__(self, in_dim: int, x_dim: int, num_params: int):
        super().__init__()
        self.x_dim = x_dim
        self.proj = nn.Linear(in_dim, num_params)


class BernoulliLikelihood(Likelihood):
    """Independent Bernoulli over the dims of x_t, for binary data."""

    def __init__(self, in_dim: int, x_dim: int):
        super().__init__(in_dim, x_dim, x_dim)

    def forward(self, h: Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=self.proj(h)).to_event(1)


class GaussianLikelihood(Likelihood):
    """Diagonal Gaussian over the dims of x_t."""

    def __init__(self, in_dim: int, x_dim: int):
        super().__init__(in_dim, x_dim, 2 * x_dim)

    def forward(self, h: Tensor) -> dist.TorchDistribution:
        loc, raw_scale = self.proj(h).chunk(2, dim=-1)
        return dist.Normal(loc, bounded_softplus(raw_scale)).to_event(1)


class GMMLikelihood(Likelihood):
    """Diagonal GMM with K components and one component choice shared across dims."""

    def __init__(self, in_dim: int, x_dim: int, components: int = 20):
        super().__init__(in_dim, x_dim, components * (1 + 2 * x_dim))
        self.components = components

    def forward(self, h: Tensor) -> dist.TorchDistribution:
        k, d = self.components, self.x_dim
        params = self.proj(h)
        logits = params[..., :k]
        loc, raw_scale = params[..., k:].unflatten(-1, (k, 2 * d)).chunk(2, dim=-1)
        return diagonal_gmm(logits, loc, bounded_softplus(raw_scale))


class HandwritingLikelihood(Likelihood):
    """Pen Bernoulli × K-component diagonal GMM over (dx, dy); x_t = (dx, dy, pen)."""

    def __init__(self, in_dim: int, x_dim: int = 3, components: int = 20):
        if x_dim != 3:
            raise ValueError(f"the handwriting likelihood needs x_dim = 3 (dx, dy, pen), got {x_dim}")
        super().__init__(in_dim, x_dim, 1 + components * 5)
        self.components = components

    def forward(self, h: Tensor) -> dist.TorchDistribution:
        k = self.components
        params = self.proj(h)
        pen_logits, logits = params[..., 0], params[..., 1 : 1 + k]
        loc, raw_scale = params[..., 1 + k :].unflatten(-1, (k, 4)).chunk(2, dim=-1)
        return PenStroke(diagonal_gmm(logits, loc, bounded_softplus(raw_scale)), pen_logits)


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
