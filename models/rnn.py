"""An LSTM autoregressive model: the RNN baseline of paper 1 (Table 1).

    h_{t-1} = LSTM(x_{<t}),    x_t ~ p(x_t | h_{t-1})

The LSTM reads the standardised input shifted by one step (a zero step first), so
its state at t has seen x_{<t}. No latent variables: the ELBO is the exact
log-likelihood.

Site: the observation ``x``, batch shape ``[batch, time]`` (batch plate dim -2, time
plate dim -1).

References:
    - [1] Hochreiter & Schmidhuber, "Long Short-Term Memory", 1997.
    - [2] Graves, "Generating Sequences With Recurrent Neural Networks", 2013.
"""

from dataclasses import dataclass

import pyro
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_stcn.inference.params import pyro_module
from pyro_stcn.nets.checks import check_batch
from pyro_stcn.nets.generation import Draw, draw_from, sample, sampler, start_sequences
from pyro_stcn.nets.masks import zero_padding
from pyro_stcn.nets.normalise import standardisation
from pyro_stcn.nets.observation import Observation


@dataclass
class RNNConfig:
    x_dim: int = 1
    likelihood: str = "bernoulli"
    hidden: int = 128  # width of the LSTM state and of the output net
    output_layers: int = 2
    components: int = 20
    shift: list[float] | None = None
    scale: list[float] | None = None


class RNN(nn.Module):
    """The LSTM baseline; :meth:`model` is the Pyro model."""

    factor_steps = 1  # no latents: every step is its own factor, and the bound is exact (pyro_stcn.inference.factors)

    def __init__(self, config: RNNConfig):
        super().__init__()
        self.config = c = config
        self.lstm = nn.LSTM(c.x_dim, c.hidden, batch_first=True)
        self.units = standardisation(c.x_dim, c.shift, c.scale)
        self.observe = Observation(c.hidden, c.hidden, c.output_layers, c.likelihood, c.x_dim, c.components, self.units)

    def states(self, x: Tensor, mask: Tensor) -> Tensor:
        """h_{t-1} ``[batch, time, hidden]``: at t, the LSTM state after x_{<t}."""
        shifted = F.pad(zero_padding(self.units.normalise(x), mask), (0, 0, 1, 0))[:, :-1]
        return self.lstm(shifted)[0]

    def model(self, x: Tensor, mask: Tensor) -> None:
        """The generative model of ``x [batch, time, x_dim]`` under ``mask [batch, time]``."""
        pyro_module("rnn", self)
        check_batch(x, mask, self.config.x_dim)
        h_prev = self.states(x, mask)
        batch, time = mask.shape
        with pyro.plate("batch", batch, dim=-2), pyro.plate("time", time, dim=-1):
            pyro.sample("x", self.observe(h_prev).mask(mask), obs=zero_padding(x, mask))

    @sampler
    def generate(self, num: int, steps: int, prime: Tensor | None = None, draw: Draw = sample) -> Tensor:
        """Samples ``[num, steps, x_dim]``, one LSTM step each, continuing ``prime [num, K,
        x_dim]`` if given; each x_t is ``draw("x", p(x_t | h_{t-1}))``."""
        x, given = start_sequences(num, steps, self.config.x_dim, prime, like=next(self.parameters()))
        previous, state = x.new_zeros(num, 1, self.config.x_dim), None
        for t in range(steps):
            h, state = self.lstm(previous, state)
            if t >= given:
                x[:, t] = draw_from(draw, "x", self.observe, h)[:, 0]
            previous = self.units.normalise(x[:, t : t + 1])
        return x
