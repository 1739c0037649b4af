"""Masks for variable-length sequences: True on real steps, False on padding."""

import torch
from torch import Tensor


def zero_padding(x: Tensor, mask: Tensor) -> Tensor:
    """x ``[batch, time, channels]`` with padded steps set to 0, whatever they held
    (NaN included), so that no network or support check ever sees them."""
    return torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
