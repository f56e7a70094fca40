"""What the processes of a ``torchrun`` job compute together: sums over ranks, a gradient of the global batch's
mean, a per-example value over the global batch. Each is the value itself in a single process (no collective,
no arithmetic), so one-process results stay bit for bit what they were.

The global batch is split into contiguous shares in rank order (``lbgat.data.loader``), possibly unequal
(16 + 15), so rank r's share starts after the shares of ranks 0..r-1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def global_mean_gradients(gradients: Sequence[torch.Tensor | None],
                          share: float) -> list[torch.Tensor | None]:
    """The gradients of the global batch's mean loss, from each rank's gradients of the mean over its own share
    (``share``: its examples / the global batch's): sum over ranks of share * gradient, in one all-reduce. The
    ranks hold the same graph, so a gradient is None (unused) on every rank or on none."""
    if not is_distributed():
        return list(gradients)
    present = [gradient for gradient in gradients if gradient is not None]
    if not present:
        return list(gradients)
    flat = torch.cat([gradient.reshape(-1) for gradient in present]) * share
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    pieces = iter(flat.split([gradient.numel() for gradient in present]))
    return [None if gradient is None else next(pieces).view_as(gradient) for gradient in gradients]


def over_global_batch(values: torch.Tensor) -> tuple[torch.Tensor, slice]:
    """``values`` (one row per example of this rank's share) over the whole global batch, in its order, and
    where this rank's rows are in it. Exact: each rank's rows are summed with zeros only."""
    if not is_distributed():
        return values, slice(0, len(values))
    rank, size = dist.get_rank(), dist.get_world_size()
    counts = torch.zeros(size, dtype=torch.long, device=values.device)
    counts[rank] = len(values)
    dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    start = int(counts[:rank].sum())
    rows = slice(start, start + len(values))
    whole = values.new_zeros((int(counts.sum()), *values.shape[1:]))
    whole[rows] = values
    dist.all_reduce(whole, op=dist.ReduceOp.SUM)
    return whole, rows
