"""Networks: the causal TCN trunk, the heads that turn features into distribution
parameters, likelihoods, the observation model, input standardisation, precision, and
the step-by-step samplers. Nothing here has a Pyro sample site."""

from torch import nn


def parameter_count(*modules: nn.Module) -> int:
    """The number of parameters of ``modules``, each parameter counted once."""
    return sum(p.numel() for p in {id(p): p for m in modules for p in m.parameters()}.values())
