"""Schedules for the KL weight β and the free-bits threshold λ, as functions of step.

References:
    - [1] Aksan & Hilliges, "STCN", ICLR 2019 (β warm-up, 1e-4 per step).
    - [2] Andersson et al., "MS-STCN", 2021, appendix A (λ0 = 0.5 nats, halved every
      300,000 steps).
"""


def linear_warmup(step: int, rate: float = 1e-4) -> float:
    """β = min(1, rate · step): from 0 up to 1 in 1/rate steps."""
    return min(1.0, rate * step)


def halving(step: int, start: float = 0.5, half_life: float = 300_000) -> float:
    """λ = start · 0.5^(step / half_life), i.e. × 0.5^(1/half_life) each step."""
    return start * 0.5 ** (step / half_life)
