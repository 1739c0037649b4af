"""Swappable priors over the latents of every model (STCN, STCN-dense, MS-STCN, VRNN).

A prior is a module called as ``prior(layer, context)`` that returns the distribution
of z^l, ``layer`` the index (0 = bottom), with event dim 1 and batch shape
``context.shape[:-1]``. ``context`` ``[batch, time, channels]`` is everything that
layer's prior conditions on:

- STCN: [d^l_{t-1}, z^{l+1}_t] (``pyro_stcn.nets.heads.join``; d^L_{t-1} alone at the top);
- MS-STCN: h^l;
- VRNN: h_{t-1} (one layer).

It is built from the context size and z size of each layer, a hidden width and the
depth of its heads (1x1 convs with ReLU before the output). A Gaussian prior
(:class:`GaussianPrior`) also gives its (μ, σ) by :meth:`GaussianPrior.gaussian`,
which the ladder guides precision-weight with. Write your own with the same
interface and assign it to ``model.prior``.
"""

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from pyro_stcn.choices import choose
from pyro_stcn.nets import sampling
from pyro_stcn.nets.heads import GaussianHead, bounded_softplus, mlp


class Prior(nn.Module):
    """The interface: ``prior(layer, context) -> distribution over z^l``."""

    def __init__(self, contexts: list[int], z_dims: list[int]):
        super().__init__()
        if len(contexts) != len(z_dims):
            raise ValueError(f"a prior needs one context size per latent layer; got {contexts} for z_dims {z_dims}")
        self.contexts, self.z_dims = list(contexts), list(z_dims)

    def check(self, layer: int, context: Tensor) -> None:
        """A clear error for a layer index or context size this prior was not built for."""
        if not 0 <= layer < len(self.z_dims):
            raise IndexError(f"{type(self).__name__} has latent layers 0..{len(self.z_dims) - 1}, got layer {layer}")
        if context.shape[-1] != self.contexts[layer]:
            raise ValueError(
                f"{type(self).__name__} layer {layer} takes a context of {self.contexts[layer]} channels "
                f"[batch, time, {self.contexts[layer]}], got shape {list(context.shape)}"
            )

    def forward(self, layer: int, context: Tensor) -> dist.TorchDistribution:
        raise NotImplementedError

    def sample(self, layer: int, context: Tensor) -> Tensor:
        """A draw of z^l from ``self(layer, context)``. Generation calls this; a subclass
        may override it to draw the same numbers without building the distribution."""
        return self(layer, context).sample()


class GaussianPrior(Prior):
    """A diagonal Gaussian prior N(μ, σ): subclasses give (μ, σ) by :meth:`gaussian`."""

    def gaussian(self, layer: int, context: Tensor) -> tuple[Tensor, Tensor]:
        """(μ, σ) of p(z^l | context), each ``[*context.shape[:-1], z_l]``."""
        raise NotImplementedError

    def forward(self, layer: int, context: Tensor) -> dist.TorchDistribution:
        return dist.Normal(*self.gaussian(layer, context)).to_event(1)

    def sample(self, layer: int, context: Tensor) -> Tensor:
        if type(self).forward is not GaussianPrior.forward:  # a subclass's own distribution
            return super().sample(layer, context)
        return sampling.normal(*self.gaussian(layer, context))


class DynamicPrior(GaussianPrior):
    """The learned dynamic prior of STCN (paper 1, eq. 8-10), MS-STCN (paper 2, eq. 7)
    and the VRNN (Chung et al. 2015, eq. 5):

        p(z^l_t | c^l_t) = N(μ^l(c^l_t), σ^l(c^l_t)),   σ = softplus(.) clamped to [1e-3, 5]

    μ and σ from separate nets, each ``layers`` 1x1 convs with ReLU and a 1x1 head."""

    def __init__(self, contexts: list[int], z_dims: list[int], hidden: int, layers: int = 2):
        super().__init__(contexts, z_dims)
        self.heads = nn.ModuleList(GaussianHead(c, hidden, z, layers) for c, z in zip(contexts, z_dims, strict=True))

    def gaussian(self, layer: int, context: Tensor) -> tuple[Tensor, Tensor]:
        self.check(layer, context)
        return self.heads[layer](context)


class StandardPrior(GaussianPrior):
    """p(z^l_t) = N(0, I) at every layer and step, as in a plain VAE."""

    def __init__(self, contexts: list[int], z_dims: list[int], hidden: int, layers: int = 2):
        super().__init__(contexts, z_dims)

    def gaussian(self, layer: int, context: Tensor) -> tuple[Tensor, Tensor]:
        self.check(layer, context)
        loc = context.new_zeros(context.shape[:-1] + (self.z_dims[layer],))
        return loc, torch.ones_like(loc)


class MixtureHead(nn.Module):
    """Mixture logits ``[..., K]``, locs and scales ``[..., K, z]`` from ``[..., in_dim]``
    features, each from its own net (``layers`` 1x1 convs with ReLU, then a 1x1 head)."""

    def __init__(self, in_dim: int, hidden: int, z_dim: int, components: int, layers: int):
        super().__init__()
        self.shape = (components, z_dim)
        self.logits = mlp(in_dim, hidden, components, layers)
        self.loc = mlp(in_dim, hidden, components * z_dim, layers)
        self.scale = mlp(in_dim, hidden, components * z_dim, layers)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        shape = h.shape[:-1] + self.shape
        return self.logits(h), self.loc(h).reshape(shape), bounded_softplus(self.scale(h)).reshape(shape)


class MixturePrior(Prior):
    """A dynamic mixture of K diagonal Gaussians, all parameters from the context:

        p(z^l_t | c^l_t) = Σ_k π_k N(z^l_t; μ_k, diag σ_k²),   (log π, μ, σ) = f^l(c^l_t)

    σ_k = softplus(.) clamped to [1e-3, 5]. It has no analytic KL against a Gaussian
    guide (the ELBO falls back to the sampled log q(z) - log p(z)), and it is not
    Gaussian, so the ladder guides cannot precision-weight with it."""

    def __init__(self, contexts: list[int], z_dims: list[int], hidden: int, layers: int = 2, components: int = 5):
        super().__init__(contexts, z_dims)
        if components < 1:
            raise ValueError(f"a mixture prior needs at least one component, got {components}")
        self.heads = nn.ModuleList(
            MixtureHead(c, hidden, z, components, layers) for c, z in zip(contexts, z_dims, strict=True)
        )

    def forward(self, layer: int, context: Tensor) -> dist.TorchDistribution:
        self.check(layer, context)
        logits, loc, scale = self.heads[layer](context)
        return dist.MixtureSameFamily(dist.Categorical(logits=logits), dist.Normal(loc, scale).to_event(1))

    def sample(self, layer: int, context: Tensor) -> Tensor:
        if type(self).forward is not MixturePrior.forward:
            return super().sample(layer, context)
        self.check(layer, context)
        return sampling.diagonal_gmm(*self.heads[layer](context))


PRIORS = {"dynamic": DynamicPrior, "standard": StandardPrior, "mixture": MixturePrior}


def make_prior(name: str, contexts: list[int], z_dims: list[int], hidden: int, layers: int = 2) -> Prior:
    """The prior called ``name`` (a key of :data:`PRIORS`) over latent layers of sizes
    ``z_dims``, layer l conditioned on a context of ``contexts[l]`` channels, its heads
    ``layers`` 1x1 convs of width ``hidden`` deep before the output."""
    return choose(PRIORS, name, "prior")(contexts, z_dims, hidden, layers)


def rename_old_prior_keys(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """A load-state-dict pre-hook for runs saved before their model's prior was a
    :class:`DynamicPrior`: MS-STCN stored its heads as ``prior.<l>.*`` and the VRNN its
    one head as ``prior.loc.*`` and ``prior.scale.*``; both are now ``prior.heads.<l>.*``."""
    old = prefix + "prior."
    for key in [k for k in state_dict if k.startswith(old)]:
        rest = key[len(old) :]
        if rest[0].isdigit():  # MS-STCN: prior.<l>.loc.0.weight
            state_dict[old + "heads." + rest] = state_dict.pop(key)
        elif rest.startswith(("loc.", "scale.")):  # VRNN: prior.loc.0.weight
            state_dict[old + "heads.0." + rest] = state_dict.pop(key)
