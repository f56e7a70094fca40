"""GPU settings of a training run: cuDNN autotuning, and what --sync-bn costs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..config import TrainConfig
from ..runtime.world import World


@contextmanager
def cudnn_autotune(device: torch.device, deterministic: bool) -> Iterator[None]:
    """cuDNN benchmarks its convolution algorithms for each new input shape and keeps the fastest:
    training repeats the same few shapes (the batch, a last smaller one), so the search pays for
    itself at once. Off with --deterministic, whose algorithms must not be chosen by timing. The
    previous setting comes back afterwards."""
    previous = torch.backends.cudnn.benchmark
    if device.type == "cuda" and not deterministic:
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def sync_bn_warnings(config: TrainConfig, world: World) -> list[str]:
    """What --sync-bn will not do, or will cost, in this run (one line each)."""
    if not config.sync_bn:
        return []
    if not world.sharded:
        return ["warning: --sync-bn does nothing in a single process: it synchronises BatchNorm across the "
                "processes of a torchrun job"]
    if config.attack.bn_mode == "train":
        return ["warning: --sync-bn with attack.bn_mode=train synchronises BatchNorm across all processes at "
                "every attack step (one collective per BatchNorm layer per forward); expect it to be slow"]
    return []
