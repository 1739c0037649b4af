"""The causal TCN trunk of STCN: gated Wavenet blocks over the shifted input.

The input x [batch, time, channels] gets one zero step prepended, so the trunk runs
over T+1 steps. Group l of K blocks gives d^l. With s = [0, x_1, ..., x_T], output
position i has seen s_0..s_i = x_{<i}; hence (paper 1, eq. 4 and 8-13)

    d_prev[l][:, t]   has seen x_{<t}   (prior, output)
    d_cur[l][:, t]    has seen x_{<=t}  (posterior)

References:
    [1] Aksan & Hilliges, "STCN: Stochastic Temporal Convolutional Networks", ICLR 2019.
    [2] van den Oord et al., "WaveNet: A Generative Model for Raw Audio", 2016.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_stcn.masks import zero_padding


class GatedBlock(nn.Module):
    """One residual gated block [2]: ``y = res(x) + W_o (tanh(W_f * x) ⊙ σ(W_g * x))``.

    ``*`` is a causal convolution with kernel 2 and the given dilation: output t sees
    inputs t - dilation and t. ``res`` is a 1x1 conv where the channel count changes.
    Shapes are ``[batch, channels, time]``, as for ``nn.Conv1d``.
    """

    def __init__(self, in_channels: int, channels: int, dilation: int):
        super().__init__()
        self.dilation = dilation
        self.conv = nn.Conv1d(in_channels, 2 * channels, kernel_size=2, dilation=dilation)
        self.out = nn.Conv1d(channels, channels, kernel_size=1)
        self.res = nn.Identity() if in_channels == channels else nn.Conv1d(in_channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        filt, gate = self.conv(F.pad(x, (self.dilation, 0))).chunk(2, dim=1)
        return self.res(x) + self.out(torch.tanh(filt) * torch.sigmoid(gate))


class Features(NamedTuple):
    """Trunk features, one ``[batch, time, channels]`` tensor per layer l = 1..L."""

    d_prev: list[Tensor]
    d_cur: list[Tensor]


class Wavenet(nn.Module):
    """L groups of K gated blocks with dilations 1, 2, ..., 2^(K-1) in each group."""

    def __init__(self, x_dim: int, channels: int, layers: int, blocks: int):
        super().__init__()
        self.groups = nn.ModuleList(
            nn.Sequential(
                *(GatedBlock(x_dim if (l == 0 and k == 0) else channels, channels, 2**k) for k in range(blocks))
            )
            for l in range(layers)
        )
        self.receptive_field = 1 + layers * (2**blocks - 1)

    def forward(self, x: Tensor, mask: Tensor) -> Features:
        """x: ``[batch, time, x_dim]``, mask: ``[batch, time]`` (True on real steps)."""
        s = F.pad(zero_padding(x, mask).transpose(1, 2), (1, 0))  # [batch, x_dim, T+1], zero step first
        d_prev, d_cur = [], []
        for group in self.groups:
            s = group(s)
            d = s.transpose(1, 2)
            d_prev.append(d[:, :-1])
            d_cur.append(d[:, 1:])
        return Features(d_prev, d_cur)
