"""One run trained by many processes: ``torchrun``, ``torch.distributed`` and
``DistributedDataParallel`` (DDP)::

    torchrun --nproc_per_node=2 run.py train ...                  # one machine
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d \\
             --rdzv-endpoint=HOST:29500 --rdzv-id=RUN run.py train ...   # several

A process started by ``torchrun`` (it sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``) joins the process group in :func:`start`: NCCL on CUDA, one GPU per
process (``cuda:LOCAL_RANK``), gloo on the CPU. A plain process joins nothing, and
everything below reduces to what a single process has always done, op for op.

What the ranks share, and why it is the single-process run:

- **The batch.** Every rank draws the global batch of size B (``--batch-size``) that a
  single process would draw at that step, from the same seeded stream, and keeps its
  rows ``[rank · B/N, (rank + 1) · B/N)`` (:func:`shard`), padded as the global batch
  is. B must be a multiple of the number of processes N (:func:`check_global_batch`): equal
  shards are what make the average below the global mean. The learning rate and the
  KL schedules are functions of the step, so they are the single process's too.
- **The gradient.** Each rank computes ``objective.differentiable_loss(model, guide,
  x_r, mask_r) / (B/N)`` through a module (:class:`pyro_stcn.training.loop.Loss`) wrapped in
  DDP (:func:`wrap`); Pyro traces inside its forward as it always does, and the trunk
  runs once per step on each rank. DDP averages the gradients over ranks, and the
  mean of N equal shards' means is the global batch mean, so every rank holds the
  gradient of the single-process loss (to float rounding). Clipping and the Adam
  step follow the all-reduce and are identical on every rank.
- **The posterior noise** cannot be the single process's: z is drawn per shard.
  Under torchrun each rank reseeds torch before every step from (seed, step, rank)
  (:func:`noise_seed`), so the ranks draw independent noise and a resumed run draws
  what the uninterrupted one would have (no per-rank random state in checkpoints).
  Hence: a model without latent draws (Wavenet, RNN) follows the single-process run
  to float tolerance; a latent model follows it in distribution only.
- **Validation** runs on rank 0 alone, on the same sequences and with the same fixed
  draws as a single process (sharding it would change those draws). Rank 0 then
  broadcasts the training state it updated (best, patience, early stop, seconds);
  the time budget is rank 0's clock, broadcast at each check. So every rank takes
  the same decisions and none waits for a collective the others skip. The process
  group's timeout is an hour (:data:`TIMEOUT`) so that the other ranks can wait out
  a long validation.
- **Files.** Rank 0 alone writes: the run directory, ``config.json``, checkpoints, the
  CSV log, TensorBoard events, plots, results and messages (the progress bar too).
  Every rank reads the same ``last.pt``, which holds nothing per rank, so a run
  started with N processes resumes with any other number, a plain process included
  (the batch stream, schedules, parameters and optimizer continue exactly; only the
  posterior noise differs from what N processes would have drawn).

Never ``nn.DataParallel``: ``pyro.plate`` breaks under it (Pyro issue #2354).
"""

import os
from collections.abc import Sequence
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK")  # set by torchrun for each process
TIMEOUT = timedelta(hours=1)  # how long a rank waits in a collective (e.g. for rank 0's validation)


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets its variables)."""
    return all(name in os.environ for name in LAUNCH_VARIABLES)


def start(device: torch.device) -> torch.device:
    """Join the process group if launched by torchrun: NCCL on CUDA, with this process's
    GPU ``cuda:LOCAL_RANK``, gloo on the CPU. Returns the device this process trains on
    (``device`` itself in a plain process)."""
    if not launched() or dist.is_initialized():
        return device
    if device.type == "cuda":
        local_rank = int(os.environ["LOCAL_RANK"])
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {local_rank}, but torch sees {torch.cuda.device_count()} CUDA device(s): "
                "give torchrun --nproc_per_node at most the number of GPUs"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return device


def finish() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """Whether this process is one rank of a process group."""
    return dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, or a plain process: the one that writes files and prints."""
    return rank() == 0


def check_global_batch(batch_size: int) -> None:
    """Refuse a global batch that does not split into equal shards."""
    if batch_size % size():
        raise ValueError(
            f"--batch-size {batch_size} does not split evenly across {size()} processes: the batch size is the "
            f"global batch, so give a multiple of {size()} (e.g. {batch_size // size() * size() or size()})"
        )


def shard(batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """This rank's rows of a global batch (x [batch, time, channels], mask [batch, time])."""
    if not active():
        return tuple(batch)
    rows = len(batch[0]) // size()
    return tuple(t[rank() * rows : (rank() + 1) * rows] for t in batch)


def noise_seed(seed: int, step: int) -> int:
    """The torch seed of this rank's random draws at ``step``, from (seed, step, rank)."""
    return int(np.random.SeedSequence([seed, step, rank()]).generate_state(1)[0])


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DDP when this process is one rank of a group, else ``module`` itself."""
    if not active():
        return module
    return nn.parallel.DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def mean(values: torch.Tensor) -> list[float]:
    """The mean over the ranks of each element of ``values`` (a 1-dim tensor), as floats
    in float64: one read from the device (the values themselves in a plain process)."""
    if not active():
        return values.double().tolist()
    total = values.to(device=_collective_device(), dtype=torch.float64, copy=True)
    dist.all_reduce(total)
    return (total / size()).tolist()


def from_main(obj):
    """Rank 0's ``obj`` on every rank (picklable; ``obj`` itself in a plain process)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_collective_device())
    return box[0]


def largest(value: int) -> int:
    """The largest of ``value`` over the ranks (``value`` itself in a plain process): a
    signal that reached one rank stops all of them after the same step."""
    if not active():
        return value
    box = torch.tensor([value], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return int(box.item())
