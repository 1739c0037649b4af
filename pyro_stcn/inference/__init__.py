"""Inference: the objectives (ELBOs whose KL term is reshaped for optimisation but
reported truthfully), the KL estimators, importance-weighted bounds and their factors,
schedules, and the hand-offs that share networks between model and guide."""

from pyro_stcn.choices import choose
from pyro_stcn.inference.importance import ImportanceWeightedELBO
from pyro_stcn.inference.objectives import AnnealedELBO, FreeBitsELBO, LayerwiseELBO, LinearFreeBitsELBO

OBJECTIVES = {
    "elbo": LayerwiseELBO,
    "annealed": AnnealedELBO,
    "free-bits": FreeBitsELBO,
    "linear-free-bits": LinearFreeBitsELBO,
    "iwae": ImportanceWeightedELBO,
}


def make_objective(name: str, **kwargs) -> LayerwiseELBO:
    """The objective called ``name``: elbo, annealed, free-bits, linear-free-bits or iwae
    (``samples`` K)."""
    return choose(OBJECTIVES, name, "objective")(**kwargs)


__all__ = [
    "OBJECTIVES",
    "AnnealedELBO",
    "FreeBitsELBO",
    "ImportanceWeightedELBO",
    "LayerwiseELBO",
    "LinearFreeBitsELBO",
    "make_objective",
]
