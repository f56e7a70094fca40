"""A small network with BatchNorm and a trajectory of its weights from exact integer arithmetic (no random
generator): what lbgat's weight averages, the independent formulas of the tests and the official averaging
codes (tools/official_compare/weight_averages.py, stored in tests/fixtures/official_weight_averages.json) are
all run over, step by step as a training run would call them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from helpers.deterministic import integer_hash_uniform

STEPS_PER_EPOCH = 5
EPOCHS = 3
IMAGE_BATCHES = (3, 3, 2)  # the images a recomputation of BatchNorm statistics passes, uneven on purpose

# The averages compared, as lbgat's ``average`` settings; each is one reference's code at small numbers (a decay
# far from 1, so a few steps move the average) and a start after the first epoch where the reference has one.
SCENARIOS: dict[str, dict[str, object]] = {
    # Wang et al. 2023 (DM-Improves-AT ema_update with warm-up and dynamic decay, update_bn copying buffers).
    "wang2023": {"kind": "ema", "decay": 0.3, "warmup": True, "start": 1, "every": 1, "bn": "copy"},
    # ReBAT (RPAT_SOTAs moving_average, update_bn=True): constant decay from epoch `start`, BN statistics averaged.
    "rebat": {"kind": "ema", "decay": 0.6, "warmup": False, "start": 1, "every": 1, "bn": "ema"},
    # DA-Alone's SWA with its 'n' (the equal-weight mean) every 2nd step of an epoch, BN recomputed (bn_update).
    "da-alone-mean": {"kind": "swa", "decay": None, "warmup": False, "start": 1, "every": 2, "bn": "recompute"},
    # DA-Alone's SWA with a fixed weight (its alpha 0.25, decay 0.75) from the first step: a first update copies.
    "da-alone-fixed": {"kind": "swa", "decay": 0.75, "warmup": False, "start": 0, "every": 1, "bn": "recompute"},
}


class TinyBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


def raw_state(model: nn.Module, step: int) -> dict[str, torch.Tensor]:
    """The weights and BatchNorm buffers after ``step`` optimiser steps (0: the initial weights)."""
    state = {}
    for index, (key, value) in enumerate(model.state_dict().items()):
        if not value.is_floating_point():  # num_batches_tracked
            state[key] = torch.tensor(step, dtype=value.dtype)
            continue
        wave = integer_hash_uniform(value.numel(), salt=7919 * step + index).view(value.shape)
        state[key] = 1.0 + 0.5 * wave if key.endswith("running_var") else 0.5 * wave
    return state


def images(epoch: int) -> list[torch.Tensor]:
    """An epoch's training images (3 x 4 x 4, in [0, 1]) in batches of IMAGE_BATCHES."""
    batches = []
    for number, size in enumerate(IMAGE_BATCHES):
        wave = integer_hash_uniform(size * 3 * 4 * 4, salt=104_729 + 31 * epoch + number)
        batches.append((0.5 + 0.5 * wave).view(size, 3, 4, 4))
    return batches
