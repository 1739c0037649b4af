"""Checks on what users pass in, with errors that say what was wrong and where."""

import torch
from pyro.infer.util import is_validation_enabled
from torch import Tensor


def check_batch(x: Tensor, mask: Tensor, x_dim: int) -> None:
    """Raise ValueError unless x is ``[batch, time, x_dim]`` with finite real steps and
    mask is a boolean ``[batch, time]`` prefix mask (each row True then False).

    The checks of values (the mask's gaps, finiteness) read the device, so they run
    only with Pyro's validation on (``pyro.enable_validation``, on by default); the
    trainer switches it off after its first step."""
    if not torch.is_tensor(x) or x.dim() != 3:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape [batch, time, {x_dim}], got {shape}")
    if x.shape[-1] != x_dim:
        raise ValueError(f"x has {x.shape[-1]} channels (shape {tuple(x.shape)}); the model expects {x_dim}")
    if not torch.is_tensor(mask) or mask.shape != x.shape[:2]:
        shape = tuple(mask.shape) if torch.is_tensor(mask) else type(mask).__name__
        raise ValueError(f"mask must have shape [batch, time] = {tuple(x.shape[:2])} to match x, got {shape}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (True on real steps), got dtype {mask.dtype}")
    if not is_validation_enabled():
        return
    if (mask[:, 1:] & ~mask[:, :-1]).any():
        row = int((mask[:, 1:] & ~mask[:, :-1]).any(1).nonzero()[0])
        raise ValueError(
            f"mask row {row} has a gap: sequences must be left-aligned, True up to their length, then False"
        )
    bad = ~torch.isfinite(x).all(-1) & mask
    if bad.any():
        b, t = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"x has NaN or inf at sequence {b}, step {t} (and {int(bad.sum()) - 1} more steps)")
