"""Generation benchmark: cached (fast-Wavenet queues) against uncached sampling, where
the network is rerun over the receptive field at every step, as the authors' code does.

Both samplers consume the same random draws, so one seed gives both the same
sequences; the benchmark checks that too, and prints times and their ratio.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class GenerationTiming:
    steps: int
    cached_seconds: float
    uncached_seconds: float
    max_difference: float  # between the two samplers' sequences, same seed

    @property
    def speed_up(self) -> float:
        return self.uncached_seconds / self.cached_seconds


def time_generation(generate: Callable[..., torch.Tensor], steps: int, num: int = 1, seed: int = 0) -> GenerationTiming:
    """Wall-clock seconds of ``generate(num, steps, cached=...)`` both ways."""
    seconds, sequences = {}, {}
    for cached in (True, False):
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        sequences[cached] = generate(num, steps, cached=cached)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds[cached] = time.perf_counter() - start
    difference = float((sequences[True] - sequences[False]).abs().max())
    return GenerationTiming(steps, seconds[True], seconds[False], difference)
