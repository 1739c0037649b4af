"""STCN and STCN-dense as Pyro models (paper 1, section 3).

Generative model, for each step t, top-down over layers l = L..1:

    d_{t-1} = TCN(x_{<t})                          (pyro_stcn.wavenet)
    z^L_t  ~ p(z^L_t | d^L_{t-1})
    z^l_t  ~ p(z^l_t | z^{l+1}_t, d^l_{t-1})       (models.priors, eq. 8-10)
    x_t    ~ p(x_t | z^1_t)                        STCN        (eq. 11)
    x_t    ~ p(x_t | z^1_t, ..., z^L_t)            STCN-dense  (eq. 12)

The output net sees only the latents, never d directly.

Sites: ``z_L`` ... ``z_1``, each ``Normal(loc, scale).to_event(1).mask(mask)`` with
batch shape ``[batch, time]``, then the observation ``x``. The batch plate is dim -2
and the time plate dim -1.

References:
    [1] Aksan & Hilliges, "STCN: Stochastic Temporal Convolutional Networks", ICLR 2019.
"""

from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from models.priors import make_prior
from pyro_stcn.checks import check_batch
from pyro_stcn.handoff import FeatureHandoff
from pyro_stcn.heads import mlp
from pyro_stcn.likelihoods import make_likelihood
from pyro_stcn.masks import zero_padding
from pyro_stcn.normalise import standardisation
from pyro_stcn.params import register
from pyro_stcn.wavenet import Features, Wavenet


@dataclass
class STCNConfig:
    """Sizes of an STCN. ``z_dims`` runs bottom (l = 1) to top (l = L); L = len(z_dims)."""

    x_dim: int = 1
    likelihood: str = "bernoulli"
    dense: bool = True
    prior: str = "dynamic"
    z_dims: list[int] = field(default_factory=lambda: [32, 16, 8, 4, 2])
    channels: int = 256  # filters of every Wavenet block
    blocks: int = 6  # K: blocks per layer, dilations 1..2^(K-1)
    hidden: int = 256  # width of the prior, posterior and output 1x1 nets
    output_layers: int = 2  # 1x1 conv + ReLU layers before the likelihood head
    components: int = 20  # mixture components, for the gmm and handwriting likelihoods
    # Training-split statistics; the nets see (x - shift) / scale (pyro_stcn.normalise).
    shift: list[float] | None = None
    scale: list[float] | None = None


class STCN(nn.Module):
    """STCN (``dense=False``) or STCN-dense (``dense=True``); :meth:`model` is the Pyro model."""

    def __init__(self, config: STCNConfig):
        super().__init__()
        self.config = config
        c = config
        self.trunk = Wavenet(c.x_dim, c.channels, layers=len(c.z_dims), blocks=c.blocks)
        self.prior = make_prior(c.prior, c.channels, c.z_dims, c.hidden)
        out_dim = sum(c.z_dims) if c.dense else c.z_dims[0]
        self.output = nn.Sequential(mlp(out_dim, c.hidden, c.hidden, layers=c.output_layers - 1), nn.ReLU())
        self.likelihood = make_likelihood(c.likelihood, c.hidden, c.x_dim, c.components)
        self.units = standardisation(c.x_dim, c.shift, c.scale)
        self.features = FeatureHandoff(self.trunk_features, self.trunk)

    @property
    def layers(self) -> int:
        return len(self.config.z_dims)

    def trunk_features(self, x: Tensor, mask: Tensor) -> Features:
        check_batch(x, mask, self.config.x_dim)
        return self.trunk(self.units.normalise(x), mask)

    def observation(self, zs: list[Tensor]) -> dist.TorchDistribution:
        """p(x_t | ·) in data units from the latents ``zs`` (bottom first), each
        ``[batch, time, z_l]``."""
        h = torch.cat(zs, dim=-1) if self.config.dense else zs[0]
        return self.units.to_data_units(self.likelihood(self.output(h)), like=h)

    def model(self, x: Tensor, mask: Tensor) -> None:
        """The generative model of ``x [batch, time, x_dim]`` under ``mask [batch, time]``."""
        register("stcn", self)
        feats = self.features.for_model(x, mask)
        batch, time = mask.shape
        zs: list[Tensor] = []
        with pyro.plate("batch", batch, dim=-2), pyro.plate("time", time, dim=-1):
            z_above = None
            for layer in reversed(range(self.layers)):
                loc, scale = self.prior(layer, feats.d_prev[layer], z_above)
                z_above = pyro.sample(f"z_{layer + 1}", dist.Normal(loc, scale).to_event(1).mask(mask))
                zs.insert(0, z_above)
            pyro.sample("x", self.observation(zs).mask(mask), obs=zero_padding(x, mask))
