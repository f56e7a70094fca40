"""A training setting is declared in one place (adding a new setting touches
one place): a setting declared only at its dataclass field, with ``lbgat.settings.setting``, is found in
``lbgat train``'s flags and ``--help``, in validation (a bad value is refused in one line) and in the
resume rules, with nothing else edited."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

import lbgat.config
from lbgat.cli import build_parser, main
from lbgat.config import ScheduleConfig, TrainConfig, resumable_settings
from lbgat.errors import ConfigError
from lbgat.settings import flag_values, setting
from lbgat.train.setup import validate


@dataclass
class ScheduleWithCooldown(ScheduleConfig):
    # The one place a new setting of a section is written.
    cooldown_epochs: int = setting(0, flag="--cooldown-epochs", minimum=0,
                                   help="epochs at the final learning rate after the schedule (new)")


@dataclass
class ConfigWithNewSettings(TrainConfig):
    schedule: ScheduleWithCooldown = field(default_factory=ScheduleWithCooldown)
    # The one place a new top-level setting is written: resumable, with a flag and a range.
    report_every: int = setting(5, flag="--report-every", metavar="STEPS", minimum=1, resumable=True,
                                help="print a report every STEPS steps (a new setting)")
    # No flag, a choice, not resumable.
    new_mode: str = setting("a", choices=("a", "b"))


@pytest.fixture
def new_settings(monkeypatch: pytest.MonkeyPatch) -> type[TrainConfig]:
    monkeypatch.setattr(lbgat.config, "TrainConfig", ConfigWithNewSettings)
    return ConfigWithNewSettings


# The resume rules before settings were declared once (the literal set trainer.py held), and data.extra, which
# like data.root is identified by its content (lbgat.data.identity), not its path.
RESUMABLE_BEFORE = frozenset({"max_steps", "log_every", "device", "out", "checkpoint_every", "on_nan",
                              "channels_last", "compile", "data.root", "data.extra"})
# Speed options declared since, which like channels_last and compile change how a step runs, not the run.
RESUMABLE_SINCE = frozenset({"compile_mode", "optim.kernel"})


def test_the_declared_resume_rules_are_the_old_ones_and_the_speed_options_since() -> None:
    assert resumable_settings() == RESUMABLE_BEFORE | RESUMABLE_SINCE


def test_a_new_setting_gets_its_flag_and_key(new_settings: type[TrainConfig]) -> None:
    args = build_parser().parse_args(["train", "--report-every", "7", "--cooldown-epochs", "2"])
    flags = flag_values(args, new_settings)
    assert flags["report_every"] == 7 and flags["schedule.cooldown_epochs"] == 2
    assert "new_mode" not in flags  # declared without a flag
    config = lbgat.config.build_config(None, flags, ["new_mode=b"])
    assert (config.report_every, config.schedule.cooldown_epochs, config.new_mode) == (7, 2, "b")


def test_a_new_setting_shows_in_train_help(new_settings: type[TrainConfig], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["train", "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--report-every STEPS print a report every STEPS steps (a new setting)" in text
    assert "--cooldown-epochs COOLDOWN_EPOCHS epochs at the final learning rate after the schedule (new)" in text


def test_a_new_setting_is_validated_by_its_declared_range(new_settings: type[TrainConfig]) -> None:
    validate(new_settings())
    with pytest.raises(ConfigError, match=r"^report_every must be >= 1, got 0$"):
        validate(new_settings(report_every=0))
    with pytest.raises(ConfigError, match=r"^schedule.cooldown_epochs must be >= 0, got -1$"):
        validate(new_settings(schedule=ScheduleWithCooldown(cooldown_epochs=-1)))
    with pytest.raises(ConfigError, match=r"^new_mode must be one of a, b, got 'c'$"):
        validate(new_settings(new_mode="c"))


def test_a_bad_new_setting_is_refused_in_one_line(new_settings: type[TrainConfig], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    code = main(["train", "--report-every", "0", "--out", str(out), "--max-steps", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0
    assert err.splitlines() == ["lbgat train: error: report_every must be >= 1, got 0"]
    assert not out.exists()


def test_a_new_setting_follows_its_resume_rule(new_settings: type[TrainConfig]) -> None:
    rules = resumable_settings()
    assert rules == RESUMABLE_BEFORE | RESUMABLE_SINCE | {"report_every"}
    assert "new_mode" not in rules and "schedule.cooldown_epochs" not in rules


@dataclass
class ConfigWithAutoSetting(TrainConfig):
    # The one place a new "auto" setting is written: its resolver beside its declaration.
    cooldown_epochs: int | None = setting(None, minimum=0, auto=lambda facts, resolved: resolved.schedule.epochs // 10)


def test_a_new_auto_setting_is_resolved_by_the_resolver_declared_with_it() -> None:
    from lbgat.train.setup import resolve

    given = ConfigWithAutoSetting(schedule=ScheduleConfig(epochs=30))
    assert resolve(given, (1, 28, 28)).cooldown_epochs == 3
    assert resolve(ConfigWithAutoSetting(cooldown_epochs=7), (1, 28, 28)).cooldown_epochs == 7
