"""1x1 maps over time, computed in the layout the convolutions leave.

The convolutions run on ``[batch, channels, time]``; the heads, the priors and Pyro's
time plate read ``[batch, time, channels]``, which the models take as a transposed
view. A 1x1 map W x_t + b at every step is the same product either way, so both
functions here do it as one batched matrix product on ``[batch, channels, time]``
(``torch.baddbmm``), copying neither input nor weights:

- :func:`pointwise`: a 1x1 ``nn.Conv1d`` on ``[batch, channels, time]``. At up to 128
  input channels its forward and backward took 0.51 to 1.07 of ``F.conv1d``'s time on
  this project's CPU with two threads (two runs); at 256 0.88 to 0.89 (1.02 with one
  thread) and at 512 1.00 and 1.25, so wider ones stay convolutions
  (``scripts/layout_study.py``, docs/guides/speed.md).
- :class:`ChannelLinear`: an ``nn.Linear`` that, given a transposed view of a
  contiguous ``[batch, channels, time]`` tensor, multiplies in that layout instead of
  letting ``F.linear`` copy the input to ``[batch, time, channels]`` first; its output
  comes back contiguous, as ``F.linear``'s does (a sampler's draws follow the memory
  order of its parameters).

The sums run in another order than the convolution's or ``F.linear``'s, so results
agree with them to float32 rounding, not bit for bit (``tests/test_layout.py``).
"""

import torch
from torch import Tensor, nn

WIDEST_AS_PRODUCT = 128  # input channels up to which a 1x1 convolution runs as baddbmm


def pointwise(conv: nn.Conv1d, x: Tensor) -> Tensor:
    """The 1x1 ``conv`` over ``x [batch, in, time]``: ``[batch, out, time]``."""
    if conv.in_channels > WIDEST_AS_PRODUCT:
        return conv(x)
    return torch.baddbmm(conv.bias[None, :, None], conv.weight[:, :, 0].expand(x.shape[0], -1, -1), x)


class ChannelLinear(nn.Linear):
    """``nn.Linear`` over the last dim that reads ``[batch, time, in]`` transposed views
    of ``[batch, in, time]`` tensors where they lie (same parameters, same state dict)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.is_contiguous() or not x.transpose(1, 2).is_contiguous():
            return super().forward(x)
        weight = self.weight.expand(x.shape[0], -1, -1)
        return torch.baddbmm(self.bias[None, :, None], weight, x.transpose(1, 2)).transpose(1, 2).contiguous()
