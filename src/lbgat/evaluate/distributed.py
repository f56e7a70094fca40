"""Sharded evaluation under ``torchrun``: which examples a rank evaluates, and gathering the results.

Examples are split by whole batches: global batch b (the same batches a single process would
form) goes to rank b mod world_size. Every batch therefore has exactly the composition it has in
a single process, so clean, FGSM, PGD and CW outcomes are bit-for-bit those of one process (their
random starts are per example anyway). AutoAttack reseeds on every batch of still-robust points,
so its per-example outcomes depend on which points share a batch: sharded AutoAttack is
statistically, not bitwise, equal to one process, and the report says how it was run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

GATHER_TIMEOUT = timedelta(hours=48)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.size > 1


def world_from_environment() -> World:
    """The process's place in a ``torchrun`` job (a single process when not launched by it)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def device_for(world: World, requested: torch.device) -> torch.device:
    """One GPU per process under torchrun (cuda:LOCAL_RANK), else the requested device."""
    if requested.type == "cuda" and world.sharded:
        return torch.device("cuda", world.local_rank)
    return requested


@contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """Joins the job's process group for the block (gloo on CPU, NCCL on GPU) and leaves it cleanly."""
    if not world.sharded or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # Ranks wait for each other only at the final gather, which can be hours after a fast rank
    # finishes its AutoAttack shard: the default 10-30 minute timeout would kill the job.
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=GATHER_TIMEOUT)
    try:
        yield
    finally:
        dist.barrier()
        dist.destroy_process_group()


def shard_indices(count: int, batch_size: int, world: World) -> torch.Tensor:
    """Positions (0..count-1) this rank evaluates: the global batches b with b % size == rank."""
    batches = torch.arange(count).split(batch_size)
    mine = [batch for number, batch in enumerate(batches) if number % world.size == world.rank]
    return torch.cat(mine) if mine else torch.zeros(0, dtype=torch.int64)


def gather(payload: Any, world: World) -> list[Any]:
    """Every rank's ``payload`` (picklable, CPU tensors), in rank order; only the main rank gets them."""
    if not world.sharded:
        return [payload]
    gathered: list[Any] | None = [None] * world.size if world.is_main else None
    dist.gather_object(payload, gathered, dst=0)
    return gathered if gathered is not None else []
