"""Data-parallel training with PyTorch's DistributedDataParallel under ``torchrun``.

The whole method (student, teacher, attack, loss) is one DDP module, so one training step is one DDP
forward and one backward: the attack inside takes input-only gradients (``torch.autograd.grad``),
which never fire DDP's gradient hooks, and the gradients of student and trainable teacher are
averaged together in the final backward. A frozen BGAT teacher has no trainable parameters, so DDP
leaves it out of the reduction. Parameters that no loss reaches (the WRN's ``sub_block1``, kept for
the official checkpoint layout) would make DDP wait forever for their gradients; they are found by
one probe step on a copy and set to ``requires_grad=False``, which changes nothing, since SGD skips
parameters without a gradient anyway.

Every method's terms are means over the examples of the batch. A rank's loss is weighted by its
share of the global batch (``local * world / global``), so DDP's average of the ranks' gradients is
the gradient of the global batch's mean even when the shares are unequal.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.loader import Batch
from ..errors import ConfigError
from ..methods import Method
from ..runtime.collectives import is_distributed
from ..runtime.world import World


def unused_parameters(method: Method, probe: Batch) -> list[str]:
    """Names of trainable parameters that one training step on ``probe`` gives no gradient
    (found on a deep copy, so the method's weights, BN statistics and gradients are untouched)."""
    copied = copy.deepcopy(method)
    copied.train()
    copied(probe)["loss"].backward()
    return [name for name, parameter in copied.named_parameters() if parameter.requires_grad and parameter.grad is None]


def freeze(method: Method, names: list[str]) -> None:
    for name in names:
        method.get_parameter(name).requires_grad_(False)


def convert_sync_batchnorm(method: Method, device: torch.device) -> None:
    """BatchNorm of the trained networks over the global batch (a frozen teacher stays in eval mode)."""
    if device.type != "cuda":
        raise ConfigError("sync_bn needs GPUs: PyTorch's SyncBatchNorm runs only on CUDA")
    # The converted layers keep the same Parameter objects, so the optimiser built earlier still holds them.
    method.student = nn.SyncBatchNorm.convert_sync_batchnorm(method.student)
    if method.teacher is not None and not method.frozen_teacher:
        method.teacher = nn.SyncBatchNorm.convert_sync_batchnorm(method.teacher)


def data_parallel(method: Method, device: torch.device) -> DistributedDataParallel:
    # Buffers (BN statistics) are synchronised from rank 0 at every forward, DDP's default.
    return DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None)


def share_weight(batch: Batch, world: World) -> float:
    """The factor that makes the average over ranks of the weighted local means the global mean."""
    return len(batch) * world.size / batch.global_size


def all_agree(flag: bool, device: torch.device) -> bool:
    """True only if ``flag`` is true on every rank."""
    if not is_distributed():
        return flag
    value = torch.full((1,), 1 if flag else 0, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's BatchNorm statistics on every rank (each rank's last local batch moved its own)."""
    if not is_distributed():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def barrier() -> None:
    if is_distributed():
        dist.barrier()
