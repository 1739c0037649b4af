"""The guide of a model without latent variables: it draws nothing.

With no latent sites the ELBO is the exact log-likelihood log p(x) and the KL term is
empty, so the deterministic baselines (Wavenet, Wavenet-dense, RNN) train and report
through the same ELBO code as the latent-variable models.
"""

from torch import Tensor, nn


class NoLatentGuide(nn.Module):
    """``guide(x, mask)`` with no sample sites and no parameters."""

    def __init__(self, model: nn.Module):
        super().__init__()

    def forward(self, x: Tensor, mask: Tensor) -> None:
        return None
