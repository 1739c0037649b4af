"""One batching path for every dataset: pad to the longest sequence, with a mask.

A dataset is a list of sequences, each a float tensor ``[time_i, x_dim]``. A batch is
``x [batch, time, x_dim]`` zero-padded on the right and ``mask [batch, time]``,
True on real steps.
"""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def pad_batch(sequences: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Right-pad ``[time_i, x_dim]`` sequences into ``(x, mask)``."""
    lengths = torch.tensor([len(s) for s in sequences])
    x = torch.nn.utils.rnn.pad_sequence(list(sequences), batch_first=True)
    mask = torch.arange(x.shape[1]) < lengths.unsqueeze(1)
    return x, mask


# What a data set's sequences are; plots, reports and predictive checks ask this, not
# the likelihood (binary sequences need not be images, say).
KINDS = {
    "image": "images in raster order, one pixel per step",
    "strokes": "pen trajectories, steps of (dx, dy, pen)",
    "audio": "waveforms, each step a frame of consecutive samples",
    "sequence": "any other sequences of vectors",
}


@dataclass
class Splits:
    """Train, validation and test sequences of one dataset, the likelihood that suits
    its values (a name from ``pyro_stcn.nets.likelihoods.LIKELIHOODS``) and what kind of
    data it is (a key of :data:`KINDS`)."""

    train: list[Tensor]
    valid: list[Tensor]
    test: list[Tensor]
    likelihood: str
    # Fresh noise for each training batch (dynamic binarisation, dequantisation): a
    # function of a sequence and a random generator. Evaluation never sees it.
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None
    sample_rate: int | None = None  # speech: samples per second, to write generated audio back
    kind: str = "sequence"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown data kind {self.kind!r}; valid: {', '.join(KINDS)}")

    @property
    def x_dim(self) -> int:
        return self.train[0].shape[-1]


def split(sequences: Sequence[Tensor], valid: int, test: int, likelihood: str, kind: str, seed: int = 0) -> Splits:
    """A fixed random split: the same ``seed`` always gives the same three sets."""
    order = torch.randperm(len(sequences), generator=torch.Generator().manual_seed(seed)).tolist()
    picked = [sequences[i] for i in order]
    return Splits(picked[valid + test :], picked[:valid], picked[valid : valid + test], likelihood, kind=kind)


def held_out(count: int, fraction: float, seed: int) -> tuple[list[int], list[int], list[int]]:
    """Indices of a fixed random split: (train, valid, test), valid and test each
    ``fraction`` of ``count`` (at least one)."""
    if count < 3:
        raise ValueError(f"a train/validation/test split needs at least 3 items, got {count}")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    k = max(1, int(fraction * count))
    return sorted(order[2 * k :]), sorted(order[:k]), sorted(order[k : 2 * k])


def split_held_out(
    sequences: Sequence[Tensor], likelihood: str, kind: str, seed: int = 0, fraction: float = 0.1
) -> Splits:
    """Sequences split by :func:`held_out` into train, valid and test."""
    train, valid, test = held_out(len(sequences), fraction, seed)
    return Splits(*([sequences[i] for i in idx] for idx in (train, valid, test)), likelihood=likelihood, kind=kind)


def batches(sequences: Sequence[Tensor], batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The sequences in order, ``batch_size`` at a time (the last batch may be smaller)."""
    for start in range(0, len(sequences), batch_size):
        yield pad_batch(sequences[start : start + batch_size])


def _seeded(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


def random_crop(sequence: Tensor, length: int, generator: torch.Generator) -> Tensor:
    """A window of ``length`` steps at a uniformly random start; shorter sequences whole."""
    if len(sequence) <= length:
        return sequence
    start = int(torch.randint(len(sequence) - length + 1, (1,), generator=generator))
    return sequence[start : start + length]


def shuffled_batches(
    sequences: Sequence[Tensor],
    batch_size: int,
    seed: int,
    start: int = 0,
    crop: int | None = None,
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless random batches from batch number ``start`` on. Epoch e is a fixed
    permutation drawn from (seed, e), and the crops of batch b (random windows of ``crop``
    steps, as the authors train on long handwriting) and its ``augment`` noise are drawn
    from (seed, e, b), so the stream is a function of the batch number alone and a
    resumed run continues it exactly."""
    per_epoch = len(sequences) // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch size {batch_size} is larger than the {len(sequences)} training sequences")
    if crop is not None and crop < 1:
        raise ValueError(f"crop must be a positive number of steps, got {crop}")
    step, epoch, order = start, None, []
    while True:
        if step // per_epoch != epoch:
            epoch = step // per_epoch
            order = torch.randperm(len(sequences), generator=_seeded(seed, epoch)).tolist()
        i = step % per_epoch * batch_size
        batch = [sequences[j] for j in order[i : i + batch_size]]
        noise = _seeded(seed, epoch, step)
        if crop is not None:
            batch = [random_crop(s, crop, noise) for s in batch]
        if augment is not None:
            batch = [augment(s, noise) for s in batch]
        yield pad_batch(batch)
        step += 1
