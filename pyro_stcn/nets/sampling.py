"""Draws without distribution objects, for generation one step at a time.

At batch 1 a generated step is a few hundred small operations, and building a
``torch.distributions`` object costs more than sampling from it (argument broadcasting,
normalised logits, ``Independent`` and ``TransformedDistribution`` wrappers). These
functions take the parameters and make the draw with the very operations the
distributions' ``sample()`` performs, in the same order, so with one seed they give the
same numbers bit for bit (``tests/test_generation.py`` checks it for every likelihood
and prior). Each is named for the distribution whose ``sample()`` it replaces.
"""

import torch
import torch.nn.functional as F
from torch import Tensor


def normal(loc: Tensor, scale: Tensor) -> Tensor:
    """``Normal(loc, scale).sample()``, for ``loc`` and ``scale`` of one shape."""
    return torch.normal(loc, scale)


def bernoulli(logits: Tensor) -> Tensor:
    """``Bernoulli(logits=logits).sample()``."""
    return torch.bernoulli(torch.sigmoid(logits))


def diagonal_gmm(logits: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """``MixtureSameFamily(Categorical(logits=logits), Normal(loc, scale).to_event(1)).sample()``:
    ``logits [..., K]``, ``loc`` and ``scale [..., K, D]``; returns ``[..., D]``. As torch
    does: the component first (one multinomial draw per mixture), then every
    component's Gaussian draw, of which the chosen one is kept."""
    probs = F.softmax(logits - logits.logsumexp(dim=-1, keepdim=True), dim=-1)
    k = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, True).T.reshape(logits.shape[:-1])
    draws = torch.normal(loc, scale)
    return draws.gather(-2, k[..., None, None].expand(*k.shape, 1, loc.shape[-1])).squeeze(-2)
