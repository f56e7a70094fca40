"""The learning-rate (and momentum) schedule of a run, a function of the epoch alone (so a resume is exact).

``step`` (the LBGAT/TRADES pipeline, scaled to any number of epochs). For the paper's 100 epochs at lr 0.1:
epoch 1 at 0.02 when warm-up is on (the official LBGAT script), epochs 2-75 at 0.1, 76-90 at 0.01, 91-100 at
0.001. For E epochs the decays come after epochs floor(0.75 E) and floor(0.9 E); warm-up is applied only when
E >= 10, since for shorter runs one epoch is too large a share of training.

``onecycle``: torch's ``OneCycleLR(optimizer, max_lr=lr, pct_start, total_steps=E)`` with its other defaults,
stepped once at the end of every epoch, as Wang et al. 2023's "cosinew" (DM-Improves-AT): epoch e trains at the
scheduler's step e - 1. Written here in closed form, with torch's arithmetic, so that no scheduler state has to
be saved.
"""

from __future__ import annotations

import math

from ..config import ScheduleConfig
from ..errors import ConfigError

MIN_EPOCHS_FOR_WARMUP = 10
# OneCycleLR's defaults, which the cosinew keeps: the ramp starts at lr / DIV_FACTOR and the cosine ends at
# lr / DIV_FACTOR / FINAL_DIV_FACTOR; the momentum goes MAX_MOMENTUM -> BASE_MOMENTUM -> MAX_MOMENTUM.
DIV_FACTOR = 25.0
FINAL_DIV_FACTOR = 1e4
BASE_MOMENTUM = 0.85
MAX_MOMENTUM = 0.95


def lr_at(epoch: int, base_lr: float, schedule: ScheduleConfig) -> float:
    """The learning rate of 1-indexed ``epoch`` (constant within an epoch, as in the official code)."""
    if schedule.kind == "onecycle":
        ramp, fraction = _one_cycle_phase(epoch, schedule)
        start = base_lr / DIV_FACTOR if ramp else base_lr
        end = base_lr if ramp else base_lr / DIV_FACTOR / FINAL_DIV_FACTOR
        return _cosine(start, end, fraction)
    assert schedule.decay_epochs is not None and schedule.warmup is not None, "resolve the config first"
    decays = sum(1 for boundary in schedule.decay_epochs if epoch > boundary)
    lr = base_lr * schedule.decay_factor**decays
    if schedule.warmup and schedule.epochs >= MIN_EPOCHS_FOR_WARMUP and epoch == 1:
        lr *= schedule.warmup_factor
    return lr


def momentum_at(epoch: int, schedule: ScheduleConfig) -> float | None:
    """The SGD momentum of 1-indexed ``epoch`` when the schedule cycles it; None when optim.momentum holds."""
    if schedule.kind != "onecycle":
        return None
    assert schedule.cycle_momentum is not None, "resolve the config first"
    if not schedule.cycle_momentum:
        return None
    ramp, fraction = _one_cycle_phase(epoch, schedule)
    return _cosine(MAX_MOMENTUM, BASE_MOMENTUM, fraction) if ramp else _cosine(BASE_MOMENTUM, MAX_MOMENTUM, fraction)


def check_one_cycle(schedule: ScheduleConfig, pct_start: float) -> None:
    """Refuse a ramp that ends exactly at the first epoch: OneCycleLR's ramp then has no length, and its
    first lr is 0 / 0 (torch raises ZeroDivisionError)."""
    if _ramp_end(pct_start, schedule.epochs) == 0:
        raise ConfigError(f"schedule.pct_start {pct_start} x schedule.epochs {schedule.epochs} is exactly 1: "
                          "OneCycleLR's ramp would have no length (its first lr is 0/0); change either")


def _ramp_end(pct_start: float, epochs: int) -> float:
    # torch's end of the first phase, in scheduler steps (negative when the ramp is under one epoch).
    return float(pct_start * epochs) - 1


def _one_cycle_phase(epoch: int, schedule: ScheduleConfig) -> tuple[bool, float]:
    """(in the ramp, the share of that phase done) at the scheduler step that ``epoch`` trains at; the phases'
    bounds are torch's, fractional ones included (a ramp of under one epoch starts the run inside the cosine)."""
    assert schedule.pct_start is not None, "resolve the config first"
    step = epoch - 1
    ramp_end = _ramp_end(schedule.pct_start, schedule.epochs)
    if step <= ramp_end:
        return True, step / ramp_end
    return False, (step - ramp_end) / (schedule.epochs - 1 - ramp_end)


def _cosine(start: float, end: float, fraction: float) -> float:
    """From ``start`` (fraction 0) to ``end`` (fraction 1) along half a cosine."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * fraction) + 1)
