"""MS-STCN: the multiscale STCN of paper 2, as a Pyro model.

L layers, layer l with stride s_l, running at time resolution T / Π_{i<=l} s_i. T is
padded on the right to a multiple of Π s_i and the padding masked.

Bottom-up (deterministic, shared with the guide):

    d^1 = Wavenet(x),   d^l = Wavenet^D(d^{l-1})     first block downsamples by s_l

Top-down, for l = L..1 (paper 2, eq. 5-9):

    h^L = Wavenet1x1(Delay(d^L)),   h^l = Wavenet1x1([g^l, Delay(d^l)])
    z^l ~ p(z^l | h^l) = N(Conv1x1(h^l), softplus(Conv1x1(h^l)))    σ clamped to [1e-3, 5]
    g^{l-1} = CondWavenet1x1^Up(h^l, z^l)                            last block upsamples by s_l

and x ~ p(x | Conv1x1(g^0)). That prior is ``prior="dynamic"``; ``models.priors`` has
the others, each called with the context h^l. Delay shifts d^l one step at its own resolution, so the
prior at coarse step k sees only fine steps < k Π s_i: generation stays causal. (With
s_1 > 1 the output at t sees x only up to the start of its layer-1 block; every layout
has s_1 = 1.)

Sites: ``z_L`` ... ``z_1``, each the prior's distribution ``.mask(mask_l)`` of shape
``[batch, T_l, z_l]`` under the batch plate (dim -2) and the layer's own time plate
``time_l`` (dim -1); then ``x`` ``[batch, T_pad, x_dim]`` under the plate ``time``.
A coarse step is real when any fine step it covers is. With ``latent=False`` there are
no latent sites: the "w/o latent variables" control, a deterministic network.

References:
    - [1] Andersson, Wahlström & Schön, "Multiscale STCN", 2021.
    - [2] Aksan & Hilliges, "STCN", ICLR 2019.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_stcn.inference.handoff import FeatureHandoff
from pyro_stcn.inference.params import pyro_module
from pyro_stcn.models.priors import make_prior, rename_old_prior_keys
from pyro_stcn.nets.checks import check_batch
from pyro_stcn.nets.generation import Draw, draw_from, sample, sampler, start_sequences
from pyro_stcn.nets.masks import coarse_masks, pad_to_multiple, zero_padding
from pyro_stcn.nets.normalise import standardisation
from pyro_stcn.nets.observation import Observation, rename_old_observation_keys
from pyro_stcn.nets.trunk import GatedBlock


@dataclass
class MSSTCNConfig:
    """Sizes of an MS-STCN, one entry per layer, bottom (l = 1) first."""

    x_dim: int = 1
    likelihood: str = "gmm"
    components: int = 10
    strides: list[int] = field(default_factory=lambda: [1, 2, 2, 2, 1])
    channels: list[int] = field(default_factory=lambda: [256] * 5)
    z_dims: list[int] = field(default_factory=lambda: [64] * 5)
    # Bottom-up dilations per layer; a layer with stride > 1 downsamples in its first block.
    dilations: list[list[int]] = field(default_factory=lambda: [[1] * 5] * 5)
    top_down_blocks: int = 2
    latent: bool = True
    prior: str = "dynamic"  # p(z^l | h^l), a name in models.priors.PRIORS
    # Training-split statistics; the nets see (x - shift) / scale (pyro_stcn.nets.normalise).
    shift: list[float] | None = None
    scale: list[float] | None = None

    def __post_init__(self):
        sizes = {"strides": self.strides, "channels": self.channels, "z_dims": self.z_dims, "dilations": self.dilations}
        if len({len(v) for v in sizes.values()}) != 1:
            given = ", ".join(f"{k} has {len(v)}" for k, v in sizes.items())
            raise ValueError(f"MS-STCN needs one entry per layer in every list; {given}")
        if any(s < 1 for s in self.strides):
            raise ValueError(f"strides must be positive integers, got {self.strides}")


@dataclass
class MSFeatures:
    """What the guide computes once and hands to the model."""

    x: Tensor  # [batch, T_pad, x_dim] in data units, padded with zeros
    mask: Tensor  # [batch, T_pad]
    masks: list[Tensor]  # [batch, T_l] per layer
    d: list[Tensor]  # bottom-up features [batch, channels_l, T_l] per layer
    top_down: "TopDown | None" = None  # the guide's top-down pass, for the model to reuse


@dataclass
class TopDown:
    """One top-down pass: h and z per layer (index l, bottom first) and g^{l-1} per layer."""

    h: dict[int, Tensor] = field(default_factory=dict)
    z: dict[int, Tensor | None] = field(default_factory=dict)
    g: dict[int, Tensor] = field(default_factory=dict)


def default_dilations(strides: list[int], blocks: int) -> list[list[int]]:
    """Bottom-up dilations as paper 2 sets them for FW=25, FW=2 and IAM-OnDB: 1, 2, 4, ...
    in every layer of a model without downsampling; otherwise all 1 except 1, 2, 4, ...
    in the top layer. (Its FW=200 multiscale model has all 1 even at the top.)"""
    dilated = [2**k for k in range(blocks)]
    if all(s == 1 for s in strides):
        return [dilated] * len(strides)
    return [[1] * blocks] * (len(strides) - 1) + [dilated]


def delay(d: Tensor) -> Tensor:
    """Shift ``[batch, channels, time]`` one step later, a zero step first."""
    return F.pad(d, (1, 0))[..., :-1]


class CondStack(nn.Module):
    """Gated 1x1 blocks conditioned on z; the last one upsamples by ``stride``."""

    def __init__(self, channels: int, out_channels: int, z_dim: int, blocks: int, stride: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            [GatedBlock(channels, channels, kernel=1, cond_channels=z_dim) for _ in range(blocks - 1)]
            + [GatedBlock(channels, out_channels, kernel=1, up=stride, cond_channels=z_dim)]
        )

    def forward(self, h: Tensor, z: Tensor | None) -> Tensor:
        for block in self.blocks:
            h = block(h, z)
        return h


class MSSTCN(nn.Module):
    """MS-STCN; :meth:`model` is the Pyro model, :meth:`top_down` the pass the guide shares."""

    def __init__(self, config: MSSTCNConfig):
        super().__init__()
        self.config = c = config
        inputs = [c.x_dim] + c.channels[:-1]
        self.bottom_up = nn.ModuleList(
            nn.ModuleList(
                [GatedBlock(n_in, ch, down=s) if s > 1 else GatedBlock(n_in, ch, dilation=dil[0])]
                + [GatedBlock(ch, ch, dilation=d) for d in dil[1:]]
            )
            for n_in, ch, s, dil in zip(inputs, c.channels, c.strides, c.dilations)
        )
        top = len(c.strides) - 1
        self.h_nets = nn.ModuleList(
            nn.Sequential(
                GatedBlock(ch * (1 if l == top else 2), ch, kernel=1),
                *(GatedBlock(ch, ch, kernel=1) for _ in range(c.top_down_blocks - 1)),
            )
            for l, ch in enumerate(c.channels)
        )
        z_dims = c.z_dims if c.latent else [0] * len(c.z_dims)
        self.up_nets = nn.ModuleList(
            CondStack(ch, out, z, c.top_down_blocks, s)
            for ch, out, z, s in zip(c.channels, [c.channels[0]] + c.channels[:-1], z_dims, c.strides)
        )
        # p(z^l | h^l) by 1x1 heads alone (no hidden layers, so no hidden width)
        contexts, prior_z_dims = (c.channels, c.z_dims) if c.latent else ([], [])
        self.prior = make_prior(c.prior, contexts, prior_z_dims, hidden=0, layers=0)
        self.units = standardisation(c.x_dim, c.shift, c.scale)
        self.observe = Observation(c.channels[0], c.channels[0], 0, c.likelihood, c.x_dim, c.components, self.units)
        self.register_load_state_dict_pre_hook(rename_old_observation_keys)  # runs saved before Observation
        self.register_load_state_dict_pre_hook(rename_old_prior_keys)  # runs saved before models.priors
        self.features = FeatureHandoff(self.bottom_up_features, self)

    @property
    def layers(self) -> int:
        return len(self.config.strides)

    @property
    def total_stride(self) -> int:
        return math.prod(self.config.strides)

    @property
    def factor_steps(self) -> int:
        """Given x, the latents of one block of the coarsest layer (Π_l s_l fine steps)
        share no factor with other blocks: the top-down nets are 1x1 and upsample within
        a block (pyro_stcn.inference.factors)."""
        return self.total_stride

    def bottom_up_features(self, x: Tensor, mask: Tensor) -> MSFeatures:
        check_batch(x, mask, self.config.x_dim)
        x, mask = pad_to_multiple(zero_padding(x, mask), mask, self.total_stride)
        d, h = [], zero_padding(self.units.normalise(x), mask).transpose(1, 2)
        for layer in self.bottom_up:
            for block in layer:
                h = block(h)
            d.append(h)
        return MSFeatures(x=x, mask=mask, masks=coarse_masks(mask, self.config.strides), d=d)

    def plates(self, feats: MSFeatures) -> tuple[pyro.plate, pyro.plate, list[pyro.plate]]:
        """The batch plate, the fine ``time`` plate and one ``time_l`` plate per layer."""
        batch, time = feats.mask.shape
        plates = [pyro.plate(f"time_{l + 1}", feats.d[l].shape[-1], dim=-1) for l in range(self.layers)]
        return pyro.plate("batch", batch, dim=-2), pyro.plate("time", time, dim=-1), plates

    def top_down(
        self, feats: MSFeatures, sample: Callable[[int, Tensor], Tensor | None], reuse: TopDown | None = None
    ) -> TopDown:
        """Run h^L .. g^0, drawing z^l = ``sample(l, h^l)`` (``h^l`` as ``[batch, T_l, C_l]``).

        ``reuse`` is a pass made with the same features: while ``sample`` returns its very
        z tensors (as under Pyro's replay), its h and g are taken instead of recomputed.
        """
        out, g, same = TopDown(), None, reuse is not None
        for l in reversed(range(self.layers)):
            h = reuse.h[l] if same else self.h_of(l, g, delay(feats.d[l]))
            z = sample(l, h.transpose(-1, -2))
            if z is not None and z.dim() > 3:
                raise NotImplementedError(
                    "MS-STCN draws one particle at a time: use num_particles without vectorize_particles, "
                    "and Predictive(parallel=False)"
                )
            same = same and z is reuse.z[l]
            g = reuse.g[l] if same else self.g_of(l, h, z)
            out.h[l], out.z[l], out.g[l] = h, z, g
        return out

    def h_of(self, l: int, g: Tensor | None, delayed: Tensor) -> Tensor:
        """h^l = Wavenet1x1([g^l, Delay(d^l)]) (the top layer: Delay(d^L) alone)."""
        return self.h_nets[l](delayed if g is None else torch.cat([g, delayed], dim=1))

    def g_of(self, l: int, h: Tensor, z: Tensor | None) -> Tensor:
        """g^{l-1} = CondWavenet1x1^Up(h^l, z^l), ``z [batch, T_l, z_l]``."""
        return self.up_nets[l](h, None if z is None else z.transpose(-1, -2))

    def observation(self, g0: Tensor) -> dist.TorchDistribution:
        """p(x | Conv1x1(g^0)) in data units, ``g0 [batch, C_1, T]``."""
        return self.observe(g0.transpose(1, 2))

    def model(self, x: Tensor, mask: Tensor) -> None:
        """The generative model of ``x [batch, time, x_dim]`` under ``mask [batch, time]``."""
        pyro_module("ms_stcn", self)
        feats = self.features.for_model(x, mask)
        batch_plate, time_plate, time_plates = self.plates(feats)

        def sample(l: int, h: Tensor) -> Tensor | None:
            if not self.config.latent:
                return None
            with batch_plate, time_plates[l]:
                return pyro.sample(f"z_{l + 1}", self.prior(l, h).mask(feats.masks[l]))

        g0 = self.top_down(feats, sample, reuse=feats.top_down).g[0]
        with batch_plate, time_plate:
            pyro.sample("x", self.observation(g0).mask(feats.mask), obs=feats.x)

    @sampler
    def generate(
        self, num: int, steps: int, prime: Tensor | None = None, cached: bool = True, draw: Draw = sample
    ) -> Tensor:
        """Ancestral samples ``[num, steps, x_dim]``, with an optional ``prime [num, K,
        x_dim]`` for the first K steps; ``draw(name, distribution)`` makes each draw.

        At fine step t, every layer l whose stride comes round (t a multiple of
        P_l = Π_{i<=l} s_i) takes its next coarse step k = t / P_l, top layer first:
        h^l_k from g^l_k and d^l_{k-1}, z^l_k ~ p(z^l | h^l_k), and the s_l steps of
        g^{l-1} that z^l_k covers. Then x_t ~ p(x | g^0_t), and x_t enters the
        bottom-up pass. Over primed steps the z are drawn from the prior too, which
        sees the primed x through d; only x is given.

        ``cached`` keeps fast-Wavenet queues in the bottom-up blocks, so a layer's
        networks run only when its stride comes round; otherwise the whole bottom-up
        pass is rerun over the sequence so far whenever a layer needs d^l_{k-1}. Both
        consume the same random draws."""
        weight = next(self.parameters())
        strides, period = self.config.strides, self.total_stride
        periods = [math.prod(strides[: l + 1]) for l in range(self.layers)]  # P_l: fine steps per step of layer l
        x, given = start_sequences(num, steps, self.config.x_dim, prime, like=weight)
        x = F.pad(x, (0, 0, 0, -steps % period))  # generate whole top-layer blocks, then cut
        bottom_up = _BottomUpStepper(self, num) if cached else None
        last_d = [weight.new_zeros(num, ch) for ch in self.config.channels]  # d^l_{k-1}
        g_block: list[Tensor | None] = [None] * (self.layers + 1)  # g^l over the current block of layer l+1
        for t in range(x.shape[1]):
            starts = [l for l in range(self.layers) if t % periods[l] == 0]
            if starts and not cached and t > 0:
                full = self.bottom_up_features(x[:, :t], torch.ones(num, t, dtype=torch.bool, device=weight.device))
                last_d = [d[:, :, t // periods[l] - 1] for l, d in enumerate(full.d[: max(starts) + 1])]
            for l in reversed(starts):
                k = t // periods[l]
                g = None if g_block[l + 1] is None else g_block[l + 1][:, :, k % strides[l + 1], None]
                h = self.h_of(l, g, last_d[l][:, :, None])  # Delay(d^l)_k = d^l_{k-1}
                z = draw_from(draw, f"z_{l + 1}", self.prior, l, h.transpose(1, 2)) if self.config.latent else None
                g_block[l] = self.g_of(l, h, z)  # [num, C, s_l]: g^{l-1} over steps k s_l .. (k+1) s_l - 1
            if t >= given:
                g0 = g_block[0][:, :, t % strides[0], None].transpose(1, 2)  # [num, 1, C]
                x[:, t] = draw_from(draw, "x", self.observe, g0)[:, 0]
            if cached:
                last_d = bottom_up(self.units.normalise(x[:, t]))
        return x[:, :steps]


class _BottomUpStepper:
    """MS-STCN's bottom-up pass one fine step at a time. A layer with stride s collects
    s inputs, then runs its downsampling block on them; its causal blocks keep
    fast-Wavenet queues. Returns the latest d^l of every layer."""

    def __init__(self, net: MSSTCN, batch: int):
        self.net = net
        self.pending: list[list[Tensor]] = [[] for _ in net.bottom_up]
        self.causal = [[b.stepper(batch) for b in layer if b.down == 1] for layer in net.bottom_up]
        self.d = [next(net.parameters()).new_zeros(batch, ch) for ch in net.config.channels]

    def __call__(self, x: Tensor) -> list[Tensor]:
        h = x
        for l, layer in enumerate(self.net.bottom_up):
            if layer[0].down > 1:
                self.pending[l].append(h)
                if len(self.pending[l]) < layer[0].down:
                    break  # this layer's block is not complete, nor any above it
                h = layer[0](torch.stack(self.pending[l], dim=-1))[:, :, 0]
                self.pending[l] = []
            for block in self.causal[l]:
                h = block(h)
            self.d[l] = h
        return list(self.d)
