"""The learning-rate schedule of the LBGAT/TRADES pipeline, scaled to any number of epochs.

For the paper's 100 epochs at lr 0.1: epoch 1 at 0.02 when warm-up is on (the official LBGAT
script), epochs 2-75 at 0.1, 76-90 at 0.01, 91-100 at 0.001. For E epochs the decays come after
epochs floor(0.75 E) and floor(0.9 E); warm-up is applied only when E >= 10, since for shorter
runs one epoch is too large a share of training.
"""

from __future__ import annotations

from ..config import ScheduleConfig

MIN_EPOCHS_FOR_WARMUP = 10


def lr_at(epoch: int, base_lr: float, schedule: ScheduleConfig) -> float:
    """The learning rate of 1-indexed ``epoch`` (constant within an epoch, as in the official code)."""
    assert schedule.decay_epochs is not None and schedule.warmup is not None, "resolve the config first"
    decays = sum(1 for boundary in schedule.decay_epochs if epoch > boundary)
    lr = base_lr * schedule.decay_factor**decays
    if schedule.warmup and schedule.epochs >= MIN_EPOCHS_FOR_WARMUP and epoch == 1:
        lr *= schedule.warmup_factor
    return lr
