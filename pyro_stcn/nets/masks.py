"""Masks for variable-length sequences: True on real steps, False on padding."""

import torch
from torch import Tensor


def zero_padding(x: Tensor, mask: Tensor) -> Tensor:
    """x ``[batch, time, channels]`` with padded steps set to 0, whatever they held
    (NaN included), so that no network or support check ever sees them."""
    return torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))


def pad_to_multiple(x: Tensor, mask: Tensor, multiple: int) -> tuple[Tensor, Tensor]:
    """Right-pad x ``[batch, time, channels]`` and mask ``[batch, time]`` with zeros /
    False to a length that is a multiple of ``multiple``."""
    extra = -x.shape[1] % multiple
    return torch.nn.functional.pad(x, (0, 0, 0, extra)), torch.nn.functional.pad(mask, (0, extra))


def coarse_masks(mask: Tensor, strides: list[int]) -> list[Tensor]:
    """The mask of each layer of a multiscale model: layer l runs at stride Π_{i<=l} s_i,
    and its step k is real when any fine step it covers is (its latent then shapes a
    real step). ``mask`` is ``[batch, time]`` with time a multiple of Π s_i."""
    masks, m = [], mask.float().unsqueeze(1)
    for s in strides:
        m = torch.nn.functional.max_pool1d(m, s) if s > 1 else m
        masks.append(m.squeeze(1) > 0)
    return masks
