"""Where a process runs: the device it asked for, its place in a ``torchrun`` job and its process group
(shared by training and evaluation)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import ConfigError

# PyTorch's own default for gloo; NCCL's is 10 minutes, short for a rank that waits while rank 0
# writes a large checkpoint or evaluates.
DEFAULT_TIMEOUT = timedelta(minutes=30)


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


def resolve_device(name: str) -> torch.device:
    """The device a ``--device`` value names (auto: the GPU when there is one); ConfigError when unusable."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but this PyTorch build sees no CUDA GPU")
    return device


def device_for(world: World, requested: torch.device) -> torch.device:
    """One GPU per process under torchrun (cuda:LOCAL_RANK), else the requested device."""
    if requested.type == "cuda" and world.sharded:
        return torch.device("cuda", world.local_rank)
    return requested


@contextmanager
def process_group(world: World, device: torch.device, timeout: timedelta = DEFAULT_TIMEOUT) -> Iterator[None]:
    """Joins the job's process group for the block (gloo on CPU, NCCL on GPU) and leaves it cleanly.

    On success every rank meets at a barrier before the group is destroyed. On an error there is no
    barrier: the other ranks may be inside a different collective, and waiting would hang the job
    instead of letting torchrun see the failure and stop the rest.
    """
    if not world.sharded or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    succeeded = False
    try:
        yield
        succeeded = True
    finally:
        if succeeded:
            dist.barrier()
        dist.destroy_process_group()
