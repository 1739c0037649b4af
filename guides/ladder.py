"""The ladder posterior: an estimate from the data, precision-weighted with the prior.

For each layer, top-down (paper 1, eq. 13; Sønderby et al. 2016):

    (μ̂, σ̂)   = f^l([d_cur^l_t, z^{l+1}_t])            its own nets, as in the authors' code
    (μ_p, σ_p) = prior.gaussian(l, [d_prev^l_t, z^{l+1}_t])   the model's prior, same z^{l+1}
    τ = σ^-2,   μ_q = (μ̂ τ̂ + μ_p τ_p) / (τ̂ + τ_p),   σ_q = (τ̂ + τ_p)^(-1/2)

For MS-STCN the estimate is N(Conv1x1([h^l, d^l])) and the prior p(z^l | h^l).
The prior must be Gaussian (``models.priors.GaussianPrior``); with any other the
ladder guides refuse to be built.

References:
    - [1] Aksan & Hilliges, "STCN", ICLR 2019.
    - [2] Sønderby et al., "Ladder Variational Autoencoders", NeurIPS 2016.
"""

from torch import Tensor, nn

from pyro_stcn.guides.independent import IndependentGuide, MultiscaleIndependentGuide
from pyro_stcn.models.ms_stcn import MSSTCN, MSFeatures
from pyro_stcn.models.priors import GaussianPrior
from pyro_stcn.models.stcn import STCN
from pyro_stcn.nets.trunk import Features


def precision_weighted(loc_a: Tensor, scale_a: Tensor, loc_b: Tensor, scale_b: Tensor) -> tuple[Tensor, Tensor]:
    """The normalised product N(μ_a, σ_a²) · N(μ_b, σ_b²) as (μ, σ).

    The authors' code returned 1/(τ_a + τ_b), a variance, and used it as σ. That is a
    bug; the standard deviation is its square root.
    """
    prec_a, prec_b = scale_a.pow(-2), scale_b.pow(-2)
    prec = prec_a + prec_b
    return (loc_a * prec_a + loc_b * prec_b) / prec, prec.rsqrt()


def check_gaussian_prior(model: nn.Module) -> None:
    """Refuse a model whose prior the ladder cannot precision-weight with."""
    if not isinstance(model.prior, GaussianPrior):
        raise ValueError(
            f"the ladder guide precision-weights with a Gaussian prior, but this {type(model).__name__} has the "
            f"{model.config.prior!r} prior ({type(model.prior).__name__}), which is not Gaussian; "
            "use the independent guide"
        )


class LadderGuide(IndependentGuide):
    """The independent estimate of :class:`IndependentGuide`, precision-weighted with
    the model's prior for the same layer and the same sample of the layer above."""

    def __init__(self, stcn: STCN):
        check_gaussian_prior(stcn)
        super().__init__(stcn)

    def posterior(self, layer: int, feats: Features, z_above: Tensor | None) -> tuple[Tensor, Tensor]:
        loc_hat, scale_hat = super().posterior(layer, feats, z_above)
        loc_p, scale_p = self.stcn.priors.for_guide(layer, feats.d_prev[layer], z_above)  # kept for the model
        return precision_weighted(loc_hat, scale_hat, loc_p, scale_p)


class MultiscaleLadderGuide(MultiscaleIndependentGuide):
    """The independent estimate precision-weighted with the prior p(z^l | h^l)."""

    def __init__(self, ms_stcn: MSSTCN):
        check_gaussian_prior(ms_stcn)
        super().__init__(ms_stcn)

    def posterior(self, layer: int, h: Tensor, feats: MSFeatures) -> tuple[Tensor, Tensor]:
        loc_hat, scale_hat = super().posterior(layer, h, feats)
        return precision_weighted(loc_hat, scale_hat, *self.ms_stcn.prior.gaussian(layer, h))
