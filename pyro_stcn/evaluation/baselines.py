"""An honest reference for binary data: independent Bernoulli pixels.

Fitted on the training split: p_{t,d} = (n_{t,d} + 1) / (N + 2), the posterior mean
under a uniform prior (so no test pixel gets probability 0). Its held-out NLL is
what a sequence model must beat to show it learned any dependence between steps.
"""

import torch
from torch import Tensor

from pyro_stcn.data.batching import pad_batch


def independent_bernoulli_nll(train: list[Tensor], test: list[Tensor]) -> float:
    """Mean over test sequences of -Σ_t Σ_d log Bernoulli(x_{t,d}; p_{t,d}), in nats.

    Sequences may differ in length; p at step t is fitted on the sequences that reach t.
    """
    x_train, m_train = pad_batch(train)
    m = m_train.unsqueeze(-1).float()
    p = ((x_train * m).sum(0) + 1) / (m.sum(0) + 2)
    x_test, m_test = pad_batch(test)
    p = p[: x_test.shape[1]]
    log_p = torch.distributions.Bernoulli(probs=p).log_prob(x_test) * m_test.unsqueeze(-1)
    return float(-log_p.sum() / len(test))
