"""Sharded evaluation under ``torchrun``: which examples a rank evaluates, and gathering the results.

Examples are split by whole batches: global batch b (the same batches a single process would
form) goes to rank b mod world_size. Every batch therefore has exactly the composition it has in
a single process, so clean, FGSM, PGD and CW outcomes are bit-for-bit those of one process (their
random starts are per example anyway). AutoAttack reseeds on every batch of still-robust points,
so its per-example outcomes depend on which points share a batch: sharded AutoAttack is
statistically, not bitwise, equal to one process, and the report says how it was run.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..runtime.world import World

# Ranks wait for each other only at the final gather, which can be hours after a fast rank
# finishes its AutoAttack shard: the default 10-30 minute timeout would kill the job.
GATHER_TIMEOUT = timedelta(hours=48)


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
