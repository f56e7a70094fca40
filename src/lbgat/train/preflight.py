"""Checks made before training starts, so that a run does not fail hours in for a reason known at the
start (the writable check is lbgat.storage.files.check_writable)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import ConfigError
from ..storage.files import nearest_existing
from .setup import RunParts


def checkpoint_bytes(parts: RunParts) -> int:
    """About what one resumable checkpoint takes: every tensor of the method plus one optimiser buffer
    (SGD momentum) per parameter."""
    state = sum(tensor.numel() * tensor.element_size() for tensor in parts.method.state_dict().values())
    momentum = sum(parameter.numel() * parameter.element_size() for parameter in parts.method.parameters())
    return state + momentum


def check_disk_space(run_dir: Path, parts: RunParts) -> None:
    """Room for one more checkpoint (written beside the old one before it replaces it)."""
    needed = int(checkpoint_bytes(parts) * 1.05) + (1 << 20)
    free = shutil.disk_usage(nearest_existing(run_dir)).free
    if free < needed:
        raise ConfigError(f"not enough disk space for a checkpoint in {run_dir}: one needs about "
                          f"{needed / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free")
