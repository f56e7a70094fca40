"""schedule.kind onecycle: every epoch's lr and momentum are those torch's OneCycleLR gives when stepped once an epoch
(DM-Improves-AT's "cosinew"), the trainer applies both each epoch and resumes them exactly, and the settings of the
other schedule kind are refused in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from helpers.cli_runs import assert_same_training_state
from helpers.one_cycle import torch_one_cycle
from lbgat.checkpoints.checkpoint import load_checkpoint
from lbgat.cli import main
from lbgat.config import ScheduleConfig, build_config
from lbgat.errors import ConfigError
from lbgat.train.schedule import lr_at, momentum_at
from lbgat.train.setup import resolve, validate


@pytest.mark.parametrize(("epochs", "pct_start"), [
    (400, 0.025),  # the cosinew of Wang et al. 2023: a ramp over epochs 1-10
    (7, 0.025),  # a ramp under one epoch: torch starts the run inside the cosine
    (100, 0.3),  # torch's default pct_start
    (10, 0.0), (10, 1.0), (1, 0.025), (41, 0.025),
])
def test_each_epoch_trains_at_torchs_one_cycle_lr_and_momentum(epochs: int, pct_start: float) -> None:
    schedule = ScheduleConfig(epochs=epochs, kind="onecycle", pct_start=pct_start, cycle_momentum=True)
    for epoch, (lr, momentum) in enumerate(torch_one_cycle(epochs, 0.2, pct_start), start=1):
        assert math.isclose(lr_at(epoch, 0.2, schedule), lr, rel_tol=1e-12, abs_tol=0), epoch
        assert math.isclose(momentum_at(epoch, schedule), momentum, rel_tol=1e-12, abs_tol=0), epoch


def test_momentum_is_left_to_the_optimiser_unless_cycled() -> None:
    assert momentum_at(3, ScheduleConfig(epochs=7, kind="onecycle", pct_start=0.3, cycle_momentum=False)) is None
    assert momentum_at(3, ScheduleConfig(epochs=7, decay_epochs=[5], warmup=False)) is None


def _checked(*overrides: str, method: str = "trades"):
    config = build_config(None, {"method.name": method}, list(overrides))
    return resolve(config, (3, 32, 32), validate(config))


def test_onecycle_resolves_its_own_settings_and_none_of_the_step_ones() -> None:
    onecycle = _checked("schedule.kind=onecycle", method="lbgat-trades").schedule  # whose step schedule warms up
    assert (onecycle.pct_start, onecycle.cycle_momentum, onecycle.decay_epochs, onecycle.warmup) == (
        0.025, True, None, None)
    step = _checked(method="lbgat-trades").schedule
    assert (step.kind, step.pct_start, step.cycle_momentum, step.decay_epochs, step.warmup) == (
        "step", None, None, [75, 90], True)
    kept = _checked("schedule.kind=onecycle", "schedule.cycle_momentum=false", "optim.momentum=0.5")
    assert kept.optim.momentum == 0.5


@pytest.mark.parametrize(("overrides", "refusal"), [
    (["schedule.warmup=true"], "schedule.warmup is set, but schedule.kind onecycle ramps the lr up itself"),
    (["schedule.decay_epochs=[5]"], "schedule.decay_epochs is a setting of the step schedule, but schedule.kind is"),
    (["schedule.warmup_factor=0.1"], "schedule.warmup_factor is a setting of the step schedule"),
    (["schedule.epochs=40"], "schedule.pct_start 0.025 x schedule.epochs 40 is exactly 1"),
    (["schedule.pct_start=1.5"], "schedule.pct_start must be <= 1"),
    (["optim.momentum=0.5"], "optim.momentum is 0.5, but schedule.cycle_momentum sets the momentum every epoch"),
])
def test_onecycle_refuses_what_it_would_ignore_or_cannot_compute(overrides: list[str], refusal: str) -> None:
    with pytest.raises(ConfigError, match=f"^{refusal}"):
        _checked("schedule.kind=onecycle", *overrides)


@pytest.mark.parametrize("override", ["schedule.pct_start=0.1", "schedule.cycle_momentum=false"])
def test_step_refuses_the_onecycle_settings(override: str) -> None:
    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=f"^{key} is a setting of the onecycle schedule, but schedule.kind is step"):
        _checked(override)


# tiny-cnn on the embedded digits, 3 epochs of 3 steps; pct_start 0.5 puts epoch 1 in the ramp, 2 and 3 in the cosine.
RUN = ["train", "--method", "pgd-at", "--model", "tiny-cnn", "--batch-size", "32", "--epochs", "3", "--no-progress",
       "--set", "optim.nesterov=true", "--set", "data.val_size=0", "--set", "data.train_size=96",
       "--set", "attack.steps=1"]
ONECYCLE = ["--schedule", "onecycle", "--set", "schedule.pct_start=0.5"]


def _optimiser_schedule(checkpoint: Path) -> set[tuple[float, float]]:
    return {(group["lr"], group["momentum"]) for group in load_checkpoint(checkpoint).optimizer["param_groups"]}


def test_the_trainer_applies_lr_and_momentum_each_epoch_and_resumes_them_exactly(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert main([*RUN, *ONECYCLE, "--out", str(straight)]) == 0
    config = load_checkpoint(straight / "last.pt").meta["config"]
    schedule = build_config(config).schedule
    epochs = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [record["lr"] for record in epochs if record["event"] == "epoch"] == [
        lr_at(epoch, 0.1, schedule) for epoch in (1, 2, 3)]
    assert _optimiser_schedule(straight / "last.pt") == {(lr_at(3, 0.1, schedule), momentum_at(3, schedule))}
    assert main([*RUN, *ONECYCLE, "--out", str(stopped), "--max-steps", "4"]) == 0  # stopped in epoch 2
    assert _optimiser_schedule(stopped / "last.pt") == {(lr_at(2, 0.1, schedule), momentum_at(2, schedule))}
    assert main([*RUN, *ONECYCLE, "--out", str(stopped), "--resume"]) == 0
    assert_same_training_state(stopped / "last.pt", straight / "last.pt")
    capsys.readouterr()
    # A resume may not switch the schedule: it would change what the run computes.
    assert main([*RUN, "--out", str(stopped), "--resume"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "schedule.kind ('onecycle' in the run, 'step' now)" in error, error
