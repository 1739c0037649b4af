"""The causal TCN trunk of STCN: gated Wavenet blocks over the shifted input.

The input x [batch, time, channels] gets one zero step prepended, so the trunk runs
over T+1 steps. Group l of K blocks gives d^l. With s = [0, x_1, ..., x_T], output
position i has seen s_0..s_i = x_{<i}; hence (paper 1, eq. 4 and 8-13)

    d_prev[l][:, t]   has seen x_{<t}   (prior, output)
    d_cur[l][:, t]    has seen x_{<=t}  (posterior)

References:
    - [1] Aksan & Hilliges, "STCN: Stochastic Temporal Convolutional Networks", ICLR 2019.
    - [2] van den Oord et al., "WaveNet: A Generative Model for Raw Audio", 2016.
    - [3] Paine et al., "Fast Wavenet Generation Algorithm", 2016.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_stcn.nets.masks import zero_padding
from pyro_stcn.nets.pointwise import pointwise


class GatedBlock(nn.Module):
    """One residual gated block [2]:

        y = skip(x) + W_o (tanh(a_f) ⊙ σ(a_g)),   [a_f; a_g] = conv([x; c])

    ``conv`` is one of these (shapes ``[batch, channels, time]``):

    - causal (default): kernel ``kernel``, ``dilation``, left padding only, so output t
      sees inputs t - dilation·(kernel-1) .. t; ``kernel=1`` is a 1x1 conv;
    - ``down=s``: kernel s, stride s; output k sees exactly inputs ks .. ks+s-1, and
      ``skip`` is their average (the authors summed them with weights 1/sqrt(s));
    - ``up=s``: transposed, kernel s, stride s; outputs ks .. ks+s-1 see exactly input
      k, and ``skip`` repeats it s times (nearest neighbour).

    ``c`` is an optional conditioning input (``cond_channels``, at the input's
    resolution). ``skip`` ends in a 1x1 conv where the channel count changes.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        kernel: int = 2,
        dilation: int = 1,
        down: int = 1,
        up: int = 1,
        cond_channels: int = 0,
    ):
        super().__init__()
        conv_in, conv_out = in_channels + cond_channels, 2 * channels
        self.down, self.up, self.pad = down, up, 0
        if down > 1:
            self.conv = nn.Conv1d(conv_in, conv_out, kernel_size=down, stride=down)
        elif up > 1:
            self.conv = nn.ConvTranspose1d(conv_in, conv_out, kernel_size=up, stride=up)
        else:
            self.pad = dilation * (kernel - 1)
            self.conv = nn.Conv1d(conv_in, conv_out, kernel_size=kernel, dilation=dilation)
        self.pointwise = down == up == kernel == 1  # a 1x1 conv (pyro_stcn.nets.pointwise)
        self.out = nn.Conv1d(channels, channels, kernel_size=1)
        self.res = nn.Identity() if in_channels == channels else nn.Conv1d(in_channels, channels, 1)

    def residual(self, x: Tensor) -> Tensor:
        """The skip path at the input's resolution: x, or its 1x1 map where the width changes."""
        return x if isinstance(self.res, nn.Identity) else pointwise(self.res, x)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        inputs = x if cond is None else torch.cat([x, cond], dim=1)
        if self.up > 1:
            return self.upsample(x, inputs)
        if self.pad:  # F.pad copies even when it pads nothing (1x1, strided and transposed blocks)
            inputs = F.pad(inputs, (self.pad, 0))
        a = pointwise(self.conv, inputs) if self.pointwise else self.conv(inputs)
        skip = self.residual(F.avg_pool1d(x, self.down) if self.down > 1 else x)
        return skip + pointwise(self.out, gated(a))

    def upsample(self, x: Tensor, inputs: Tensor) -> Tensor:
        """The transposed block (kernel = stride = s) as s phases: output ks + j is phase
        j at step k, a 1x1 block whose gate map is the transposed conv's tap j. The s
        phases' gate maps run as one product, and the phases are interleaved once, at the
        end, where the skip (the input repeated s times) is a broadcast. The same sums as
        ``ConvTranspose1d``; a block's forward and backward took 0.74 to 0.77 of that
        version's time on this project's CPU (``scripts/layout_study.py``)."""
        (batch, _, length), s, w = inputs.shape, self.up, self.conv.weight  # w: [in, 2C, s]
        weight = w.permute(2, 1, 0).reshape(s * w.shape[1], w.shape[0])  # rows (phase j, channel)
        bias = self.conv.bias.repeat(s)[None, :, None]
        a = torch.baddbmm(bias, weight.expand(batch, -1, -1), inputs)  # [batch, s·2C, T]
        h = pointwise(self.out, gated(a.view(batch * s, -1, length))).view(batch, s, -1, length)
        h = h + self.residual(x)[:, None]  # [batch, s, C, T]
        return h.permute(0, 2, 3, 1).reshape(batch, h.shape[2], length * s)

    def stepper(self, batch: int) -> "BlockStepper":
        """This causal block one position at a time, for ``batch`` sequences."""
        return BlockStepper(self, batch)


class BlockStepper:
    """A causal :class:`GatedBlock` one new position at a time (fast Wavenet [3]):
    O(1) work per position, however long the sequence so far.

    It keeps a ring buffer of the block's past inputs, ``queue [pad, batch, channels]``,
    whose slot ``m % pad`` holds the input at position m (zeros before the first, as the
    left padding of :meth:`GatedBlock.forward`). The convolution at one position is one
    matrix product over [the taps, oldest first; the input], with the weights laid out
    for it once here. At batch 1 a step is a handful of small operations, so what each
    costs to dispatch, not arithmetic, decides the speed: the taps and the input are
    copied into one preallocated row and the gate works in place in the product's
    buffer, so that a block's step is 11 operator calls and no allocation but its
    output. The sums run in another order than the convolution's, so the outputs agree
    with :meth:`GatedBlock.forward` to float32 rounding, not bit for bit
    (``tests/test_generation.py``). It computes no gradients, and it reads the block's
    weights once, when it is made: make a new one after the weights change."""

    def __init__(self, block: GatedBlock, batch: int):
        assert block.down == block.up == 1, "only causal blocks step one position at a time"
        conv = block.conv
        self.dilation, self.kernel, self.pad = conv.dilation[0], conv.kernel_size[0], block.pad
        channels, width = conv.in_channels, conv.out_channels // 2
        # Copies of the weights as they are now, [in, out] (products with contiguous
        # [in, out] weights run faster at batch 1 than F.linear's [out, in]), no gradients.
        # The convolution's: [kernel · in, 2C], rows ordered (tap, channel), oldest tap first.
        self.conv_weight = conv.weight.detach().permute(2, 1, 0).reshape(-1, conv.out_channels).contiguous()
        self.conv_bias = conv.bias.detach()
        self.out_weight, self.out_bias = block.out.weight.detach()[:, :, 0].t().contiguous(), block.out.bias.detach()
        res = block.res
        self.res = None if isinstance(res, nn.Identity) else (
            res.weight.detach()[:, :, 0].t().contiguous(), res.bias.detach())  # fmt: skip
        self.queue = conv.weight.new_zeros(self.pad, batch, channels)
        self.inputs = conv.weight.new_zeros(batch, self.kernel * channels)  # [taps; x]
        self.slots = list(self.inputs.split(channels, dim=1))  # views: one per tap, then x
        self.a = conv.weight.new_empty(batch, 2 * width)
        self.filt, self.gate = self.a[:, :width], self.a[:, width:]
        self.position = 0

    def __call__(self, x: Tensor) -> Tensor:
        """The block's output at the next position from its input there, ``x [batch,
        channels]``: one ``[batch, channels]``."""
        p = self.position
        for j, slot in zip(range(self.kernel - 1, 0, -1), self.slots):
            slot.copy_(self.queue[(p - j * self.dilation) % self.pad])
        self.slots[-1].copy_(x)
        torch.addmm(self.conv_bias, self.inputs, self.conv_weight, out=self.a)
        gated = self.filt.tanh_().mul_(self.gate.sigmoid_())  # tanh(a_f) ⊙ σ(a_g), in place
        y = torch.addmm(self.out_bias, gated, self.out_weight)
        y += x if self.res is None else torch.addmm(self.res[1], x, self.res[0])
        if self.pad:
            self.queue[p % self.pad] = x  # after reading: that slot held position p - pad
        self.position = p + 1
        return y


def upsampled_by_transposed_conv(block: GatedBlock, x: Tensor, inputs: Tensor) -> Tensor:
    """What :meth:`GatedBlock.upsample` computes, as ``ConvTranspose1d`` computes it, the
    skip repeated before its 1x1 map: the reference that ``tests/test_layout.py`` and
    ``scripts/layout_study.py`` hold it against."""
    skip = x.repeat_interleave(block.up, dim=-1)
    skip = skip if isinstance(block.res, nn.Identity) else block.res(skip)
    return skip + block.out(gated(block.conv(inputs)))


def gated(a: Tensor) -> Tensor:
    """tanh(a_f) ⊙ σ(a_g) for ``a = [a_f; a_g]`` along channels (dim 1)."""
    filt, gate = a.chunk(2, dim=1)
    return torch.tanh(filt) * torch.sigmoid(gate)


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
                *(
                    GatedBlock(x_dim if (l == 0 and k == 0) else channels, channels, dilation=2**k)
                    for k in range(blocks)
                )
            )
            for l in range(layers)
        )
        self.receptive_field = 1 + layers * (2**blocks - 1)

    def forward(self, x: Tensor, mask: Tensor) -> Features:
        """x: ``[batch, time, x_dim]``, mask: ``[batch, time]`` (True on real steps)."""
        s = F.pad(zero_padding(x, mask).transpose(1, 2), (1, 0))  # [batch, x_dim, T+1], zero step first
        d = [h.transpose(1, 2) for h in self.over(s)]
        return Features([h[:, :-1] for h in d], [h[:, 1:] for h in d])

    def over(self, s: Tensor) -> list[Tensor]:
        """d^l over an input ``s [batch, x_dim, time]``, one ``[batch, channels, time]``
        per layer. Position i sees s_{i - receptive_field + 1} .. s_i."""
        d = []
        for group in self.groups:
            s = group(s)
            d.append(s)
        return d

    def stepper(self, batch: int) -> "WavenetStepper":
        return WavenetStepper(self, batch)


class WavenetStepper:
    """:meth:`Wavenet.over` one position at a time, with a queue per block: each call
    costs O(blocks), however long the sequence so far."""

    def __init__(self, net: Wavenet, batch: int):
        self.groups = [[block.stepper(batch) for block in group] for group in net.groups]

    def __call__(self, s: Tensor) -> list[Tensor]:
        """d^l at the next position from the input there, ``s [batch, x_dim]``: one
        ``[batch, channels]`` per layer."""
        d = []
        for group in self.groups:
            for block in group:
                s = block(s)
            d.append(s)
        return d
