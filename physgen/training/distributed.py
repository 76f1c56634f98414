"""Data-parallel training with torch.distributed (DDP), launched by ``torchrun``.

One training state on every rank; each step every rank draws the *global* batch's indices
from the shared data generator (same seed, same stream on every rank) and trains on its own
shards of it. The global batch of ``batch_size`` rows is cut into ``shards`` equal shards,
each with its own noise generator (seeded by ``(seed, shard)``); rank ``r`` of ``W`` owns
shards ``r·S/W … (r+1)·S/W − 1`` and accumulates their gradients, and DDP averages over
ranks. The gradient is therefore the gradient of the mean loss over the global batch with
the same noise whatever ``W`` is: a W-rank run equals a one-process run with
``shards = S`` (gradient accumulation), up to float summation order. Rank 0 alone writes
checkpoints (gathering every shard's generator state, so resume stays exact), logs and
shows the progress bar.

Environment (set by ``torchrun``): ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``. Backend: NCCL on CUDA, gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from physgen.errors import ConfigError

__all__ = [
    "DistInfo",
    "all_gather_objects",
    "barrier",
    "dist_info",
    "init_distributed",
    "mean_over_ranks",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and shows progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """The running process group's rank and size (one process when none is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local)


def init_distributed(device: torch.device | str | None = None) -> tuple[DistInfo, torch.device]:
    """Join the ``torchrun`` job described by the environment, if any, and return this rank's
    info and device: ``cuda:LOCAL_RANK`` when ``device`` is CUDA, else ``device`` (or CPU).

    Without ``WORLD_SIZE > 1`` in the environment this does nothing (one process)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return dist_info(), device
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch has no torch.distributed")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return dist_info(), device


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over all ranks (``t`` itself with one process)."""
    info = dist_info()
    if not info.enabled:
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / info.world_size


def all_gather_objects(obj: Any) -> list[Any]:
    """``obj`` from every rank, in rank order (``[obj]`` with one process)."""
    info = dist_info()
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (no-op with one process)."""
    if dist_info().enabled:
        dist.barrier()
