"""The VRNN's filtering posterior (Chung et al. 2015, eq. 9):

    q(z_t | x_{<=t}, z_{<t}) = N(μ_z,t, σ_z,t),    [μ_z,t, σ_z,t] = φ_enc([φ_x(x_t), h_{t-1}])

drawn step by step through the model's own recurrence (``VRNN.recurrence``), with the
same sites, plate and masks as the model, so every KL stays analytic. The pass is
handed to the model, which reuses its LSTM states.

References:
    - [1] Chung et al., "A Recurrent Latent Variable Model for Sequential Data", NeurIPS 2015.
"""

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from pyro_stcn.inference.params import pyro_module
from pyro_stcn.models.vrnn import VRNN, latent_site
from pyro_stcn.nets.heads import GaussianHead


class VRNNGuide(nn.Module):
    """φ_enc for ``vrnn``; call it as ``guide(x, mask)``. It uses, but does not own, the
    model's φ_x, φ_z and LSTM (its ``state_dict`` holds φ_enc only)."""

    def __init__(self, vrnn: VRNN):
        super().__init__()
        c = vrnn.config
        self._vrnn = (vrnn,)  # a tuple keeps the model's parameters out of this module
        self.encoder = GaussianHead(2 * c.hidden, c.hidden, c.z_dim, layers=1)

    @property
    def vrnn(self) -> VRNN:
        return self._vrnn[0]

    def posterior(self, x_feat: Tensor, h_prev: Tensor) -> dist.TorchDistribution:
        """q(z_t | ·) from φ_x(x_t) and h_{t-1}, each ``[batch, hidden]``: a Normal with
        batch shape ``[batch, 1]``, as the model's site of z_t."""
        loc, scale = self.encoder(torch.cat([x_feat, h_prev], dim=-1).unsqueeze(-2))
        return dist.Normal(loc, scale).to_event(1)

    def forward(self, x: Tensor, mask: Tensor) -> None:
        pyro_module("vrnn_guide", self)
        feats = self.vrnn.features.for_guide(x, mask)
        draw = lambda t, h: latent_site(t, self.posterior(feats.x[:, t], h), mask)  # noqa: E731
        with pyro.plate("batch", len(x), dim=-2):
            feats.guide_pass = self.vrnn.recurrence(feats.x, draw)
