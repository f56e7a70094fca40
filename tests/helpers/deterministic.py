"""Weights and inputs from exact arithmetic, with no random generator: the same on every machine,
so they can be handed to the official code and the results stored."""

from __future__ import annotations

import math

import torch
from torch import nn


def integer_hash_uniform(count: int, salt: int) -> torch.Tensor:
    """``count`` well-mixed values in [-1, 1) from exact integer arithmetic: the same on every machine.

    A block of a prime length is hashed and tiled, which keeps ResNet-18-sized models fast.
    """
    mask = 0xFFFFFFFF
    block = min(count, 65_521)
    state = (torch.arange(block, dtype=torch.int64) + salt * 1_000_003) & mask
    for _ in range(2):
        state = ((state ^ (state >> 16)) * 0x45D9F3B) & mask
    state = state ^ (state >> 16)
    values = state.to(torch.float32) / 2.0**31 - 1.0
    return values.repeat(-(-count // block))[:count]


def deterministic_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights that depend only on key order and shapes (no RNG), for comparing with stored official logits.

    tests/fixtures/*_official_logits.json hold, for "eval" and "train" mode, the logits of the official
    classes (LBGAT models/wideresnet.py ``WideResNet(depth=16, widen_factor=2)`` and
    models/resnetcifar.py ``ResNet18_cifar()``, 10 classes) loaded with exactly these weights,
    on ``deterministic_inputs(2, (3, 32, 32))``.
    """
    state = {}
    for index, (key, value) in enumerate(model.state_dict().items()):
        if not value.is_floating_point():
            state[key] = value.clone()
            continue
        wave = integer_hash_uniform(value.numel(), salt=index).view(value.shape)
        if value.dim() >= 2:  # conv / linear weight, variance 1/fan_in
            filled = wave * math.sqrt(3.0 / math.prod(value.shape[1:]))
        elif key.endswith("running_var"):
            filled = 1.0 + 0.5 * wave
        elif key.endswith("weight"):  # BN scale
            filled = 1.0 + 0.2 * wave
        else:  # biases, running means
            filled = 0.1 * wave
        state[key] = filled.to(value.dtype)
    return state


def deterministic_inputs(batch: int, shape: tuple[int, int, int]) -> torch.Tensor:
    count = batch * math.prod(shape)
    return (
        (0.5 + 0.5 * torch.sin(torch.arange(count, dtype=torch.float64) * 0.013)).float().view(batch, *shape)
    )
