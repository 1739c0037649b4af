"""The observation model shared by every model: features to p(x_t | ·) in data units.

    p(x_t | h_t) = likelihood(output(h_t)),   output = ``layers`` 1x1 conv + ReLU

mapped back through the input standardisation (``pyro_stcn.nets.normalise``), so that its
log-density is in the data's own units. STCN feeds it the latents, Wavenet the trunk's
features, the RNNs their state; MS-STCN uses no output layers (p(x | Conv1x1(g^0))).
"""

from pyro import distributions as dist
from torch import Tensor, nn

from pyro_stcn.nets.heads import mlp
from pyro_stcn.nets.likelihoods import make_likelihood
from pyro_stcn.nets.normalise import Standardisation
from pyro_stcn.nets.precision import full_precision, without_autocast


class Observation(nn.Module):
    """``observation(h)`` for features ``h [batch, time, in_dim]``: a distribution with
    batch shape ``[batch, time]`` and event shape ``[x_dim]``, in data units."""

    def __init__(
        self, in_dim: int, hidden: int, layers: int, likelihood: str, x_dim: int, components: int,
        units: Standardisation,
    ):  # fmt: skip
        super().__init__()
        self.output = nn.Sequential(mlp(in_dim, hidden, hidden, layers=layers - 1), nn.ReLU()) if layers else None
        self.likelihood = make_likelihood(likelihood, hidden if layers else in_dim, x_dim, components)
        self.units = units

    def forward(self, h: Tensor) -> dist.TorchDistribution:
        features = self.features(h)
        with without_autocast(features.device.type):
            return self.units.to_data_units(self.likelihood(features), like=features)

    def sample(self, h: Tensor) -> Tensor:
        """A draw from ``forward(h)``, the same numbers, without building the
        distribution (for generation): ``[batch, time, x_dim]`` in data units."""
        features = self.features(h)
        with without_autocast(features.device.type):
            return self.units.to_data(self.likelihood.sample(features))

    def features(self, h: Tensor) -> Tensor:
        """What the likelihood head reads: the output layers' features, float32."""
        features = h if self.output is None else self.output(h)
        (features,) = full_precision(features)  # the likelihood in float32 (pyro_stcn.nets.precision)
        return features


def rename_old_observation_keys(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """A load-state-dict pre-hook: runs saved before the output net and likelihood head
    moved into ``observe`` (an :class:`Observation`) stored them as ``output.*`` and
    ``likelihood.*``; rename those keys so that such runs still load."""
    for key in [k for k in state_dict if k.startswith((prefix + "output.", prefix + "likelihood."))]:
        state_dict[prefix + "observe." + key[len(prefix) :]] = state_dict.pop(key)
