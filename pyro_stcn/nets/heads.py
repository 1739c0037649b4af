"""Small 1x1-conv nets that turn features into distribution parameters.

A 1x1 convolution over time is a linear map over channels applied at every step,
so on ``[batch, time, channels]`` tensors it is an ``nn.Linear`` (a
:class:`~pyro_stcn.nets.pointwise.ChannelLinear`, which reads transposed views of the
convolutions' ``[batch, channels, time]`` where they lie).
"""

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_stcn.nets.pointwise import ChannelLinear
from pyro_stcn.nets.precision import full_precision

SCALE_MIN = 1e-3
SCALE_MAX = 5.0


def bounded_softplus(raw: Tensor, low: float = SCALE_MIN, high: float = SCALE_MAX) -> Tensor:
    """σ = softplus(raw) clamped to [low, high]; used for every Gaussian scale."""
    return F.softplus(raw).clamp(low, high)


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 2) -> nn.Sequential:
    """``layers`` 1x1 convs with ReLU, then a 1x1 head."""
    dims = [in_dim] + [hidden] * layers
    body = [m for a, b in zip(dims[:-1], dims[1:], strict=True) for m in (ChannelLinear(a, b), nn.ReLU())]
    return nn.Sequential(*body, ChannelLinear(dims[-1], out_dim))


def join(d: Tensor, z_above: Tensor | None) -> Tensor:
    """[d, z_above] along channels; d ``[batch, time, C]`` is broadcast to the leading
    dims of z (e.g. a particle dim from ``vectorize_particles``)."""
    if z_above is None:
        return d
    return torch.cat([d.expand(*z_above.shape[:-1], -1), z_above], dim=-1)


def layer_heads(channels: int, z_dims: list[int], hidden: int) -> nn.ModuleList:
    """One :class:`GaussianHead` per latent layer, fed with [d^l, z^{l+1}] (the top
    layer with d^L alone)."""
    above = z_dims[1:] + [0]
    return nn.ModuleList(GaussianHead(channels + a, hidden, z) for z, a in zip(z_dims, above, strict=True))


class GaussianHead(nn.Module):
    """(μ, σ) of a diagonal Gaussian from ``[batch, time, in_dim]`` features.

    μ and σ come from separate nets, as in the authors' code: ``layers`` 1x1 convs with
    ReLU, then a 1x1 head (paper 1, appendix 6.1: two; MS-STCN: none, a 1x1 head alone).
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, layers: int = 2):
        super().__init__()
        self.loc = mlp(in_dim, hidden, out_dim, layers)
        self.scale = mlp(in_dim, hidden, out_dim, layers)

    # Set while a sampler runs (fused_for_sampling). A class default, so that modules
    # pickled before it existed still load.
    fused: "FusedGaussianHead | None" = None

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        if self.fused is not None and not torch.is_grad_enabled():  # a snapshot has no gradients
            loc, scale = self.fused(h)
            return full_precision(loc, scale)  # float32 under autocast (pyro_stcn.nets.precision)
        loc, raw = full_precision(self.loc(h), self.scale(h))
        return loc, bounded_softplus(raw)


class FusedGaussianHead:
    """A :class:`GaussianHead`'s μ and σ nets run side by side, for generation: the
    first maps of both (same input) as one product over ``[W_μ; W_σ]``, every later
    pair as one batched product: half the matrix-product calls, which at batch 1 cost
    more to make than their arithmetic.

    It reads the head's weights once, when made, with no gradients (as
    :class:`~pyro_stcn.nets.trunk.BlockStepper` does): make a new one after the weights
    change. The sums run in another order than the two nets', so (μ, σ) agree with them
    to float32 rounding (``tests/test_generation.py``). What it saves at batch 1:
    ``scripts/sampler_floor.py`` (docs/guides/speed.md)."""

    def __init__(self, head: GaussianHead):
        with torch.no_grad():
            loc, scale = ([m for m in net if isinstance(m, nn.Linear)] for net in (head.loc, head.scale))
            # [in, 2 out]: μ's columns, then σ's
            self.first = (torch.cat([loc[0].weight, scale[0].weight]).t().contiguous(),
                          torch.cat([loc[0].bias, scale[0].bias]))  # fmt: skip
            # [2, in, out] and [2, 1, out]: μ's map, then σ's
            self.pairs = [
                (torch.stack([a.weight.t(), b.weight.t()]).contiguous(), torch.stack([a.bias, b.bias])[:, None])
                for a, b in zip(loc[1:], scale[1:], strict=True)
            ]

    @staticmethod
    def fits(head: nn.Module) -> bool:
        """Whether ``head`` is a :class:`GaussianHead` computing as built: the class's own
        ``forward``, two :func:`mlp` nets of the same widths with biases, and no hooks
        (which fusing would skip). Any other head keeps its own computation."""
        if type(head) is not GaussianHead or not all(isinstance(n, nn.Sequential) for n in (head.loc, head.scale)):
            return False
        kinds = [[type(m) for m in net] for net in (head.loc, head.scale)]
        built = [ChannelLinear if i % 2 == 0 else nn.ReLU for i in range(len(kinds[0]))]  # mlp(): map, ReLU, ..., map
        hooked = any(m._forward_hooks or m._forward_pre_hooks for m in head.modules() if m is not head)
        return (
            kinds[0] == kinds[1] == built
            and len(built) % 2 == 1
            and not hooked
            and all(a.weight.shape == b.weight.shape for a, b in zip(head.loc[::2], head.scale[::2], strict=True))
            and all(m.bias is not None for m in [*head.loc[::2], *head.scale[::2]])
        )

    def __call__(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """(μ, σ) from ``h [..., in]``, each ``[..., out]``."""
        weight, bias = self.first
        x = torch.addmm(bias, h.reshape(-1, h.shape[-1]), weight)
        x = x.unflatten(1, (2, -1)).transpose(0, 1)  # [2, rows, width]: μ's net, then σ's
        for weight, bias in self.pairs:
            x = torch.baddbmm(bias, x.relu_(), weight)
        shape = h.shape[:-1] + x.shape[-1:]
        return x[0].reshape(shape), bounded_softplus(x[1]).reshape(shape)


@contextlib.contextmanager
def fused_for_sampling(model: nn.Module) -> Iterator[None]:
    """While it runs, every :class:`GaussianHead` of ``model`` that
    :meth:`FusedGaussianHead.fits` computes through a :class:`FusedGaussianHead` made
    from its weights now, where no gradients are taken; afterwards as before (also when
    nested: a custom draw may generate). The samplers run in it
    (:func:`pyro_stcn.nets.generation.sampler`)."""
    heads = [m for m in model.modules() if FusedGaussianHead.fits(m)]
    before = [head.fused for head in heads]
    for head in heads:
        head.fused = FusedGaussianHead(head)
    try:
        yield
    finally:
        for head, fused in zip(heads, before, strict=True):
            head.fused = fused
