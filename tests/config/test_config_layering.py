"""Config layering, typed overrides, resolution of automatic settings, and the lr schedule."""

from __future__ import annotations

from pathlib import Path

import pytest

from lbgat.config import ScheduleConfig, build_config, config_to_yaml, load_yaml, parse_override
from lbgat.errors import ConfigError
from lbgat.recipes import find_recipe, list_recipes
from lbgat.train.schedule import lr_at
from lbgat.train.setup import resolve, validate


def test_layers_apply_in_order_recipe_flags_overrides() -> None:
    recipe = {"method": {"name": "trades", "alpha": 1.0}, "batch_size": 64, "schedule": {"epochs": 10}}
    config = build_config(recipe, {"schedule.epochs": 20, "seed": None}, ["batch_size=32", "method.alpha=3"])
    assert config.method.name == "trades" and config.method.params == {"alpha": 3}
    assert config.schedule.epochs == 20 and config.batch_size == 32 and config.seed == 1


@pytest.mark.parametrize(("override", "message"), [
    ("schedule.epoch=3", "unknown setting 'schedule.epoch'"),
    ("nonsense=1", "unknown setting 'nonsense'"),
    ("batch_size=1.5", "'batch_size' must be int"),
    ("batch_size=true", "'batch_size' must be int"),
    ("attack.eps=abc", "'attack.eps' must be float"),
    ("schedule.decay_epochs=[75, x]", "must be list of int"),
    ("seed", "--set expects key=value"),
])
def test_bad_overrides_are_one_line_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        build_config(None, None, [override])
    assert "\n" not in str(error.value)


def test_overrides_keep_their_types() -> None:
    # The TRADES/LBGAT scripts lost the type of --epsilon/--step-size on the command line (TRADES PR #31).
    config = build_config(None, None, ["attack.eps=0.031", "attack.steps=10", "optim.lr=1", "data.root=123",
                                       "schedule.decay_epochs=[3, 4]", "max_steps=null"])
    assert config.attack.eps == 0.031 and isinstance(config.attack.eps, float)
    assert config.attack.steps == 10 and isinstance(config.attack.steps, int)
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert config.data.root == "123"
    assert config.schedule.decay_epochs == [3, 4] and config.max_steps is None


def test_parse_override_leaves_method_hyperparameters_for_the_method() -> None:
    assert parse_override("method.alpha=6") == ("method.alpha", 6)


def test_unknown_method_hyperparameter_is_rejected_before_anything_runs() -> None:
    config = build_config(None, {"method.name": "trades"}, ["method.beta=1"])
    with pytest.raises(ConfigError, match="unknown setting 'method.beta'"):
        validate(config)


@pytest.mark.parametrize(("override", "message"), [
    ("attack.eps=-0.1", r"attack.eps must be in \[0, 1\]"),
    ("attack.eps=2", r"attack.eps must be in \[0, 1\]"),
    ("attack.steps=0", "attack.steps must be >= 1"),
    ("attack.step_size=0", "attack.step_size must be > 0"),
    ("optim.lr=0", "optim.lr must be > 0"),
    ("batch_size=0", "batch_size must be >= 1"),
    ("attack.bn_mode=test", "attack.bn_mode must be one of"),
    ("attack.start=gaussian", "attack.start must be one of"),
    ("model=resnet-9000", "unknown model 'resnet-9000'"),
    ("method.name=fast-at", "unknown method 'fast-at'"),
    ("data.name=svhn", "unknown dataset 'svhn'"),
])
def test_invalid_settings_are_rejected_by_validate(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(build_config(None, None, [override]))


def test_eps_zero_is_legal() -> None:
    """Eps 0 passes validation and stays 0 through resolution: a value, not "unset"
    (it is not replaced by the dataset's default radius). That PGD at eps 0 gives x back exactly is
    held by tests/attacks/test_attack_constraints_and_strength.py."""
    config = build_config(None, None, ["attack.eps=0"])
    validate(config)
    resolved = resolve(config, (3, 32, 32))
    assert resolved.attack.eps == 0.0
    assert resolved.val.eps == resolve(build_config(None, None, []), (3, 32, 32)).val.eps


def test_resolution_follows_the_dataset_and_the_method() -> None:
    colour = resolve(build_config(None, {"data.name": "cifar10", "method.name": "lbgat-trades"}), (3, 32, 32))
    assert (colour.attack.eps, colour.attack.step_size, colour.attack.steps) == (0.031, 0.007, 10)
    assert (colour.val.eps, colour.val.step_size, colour.val.steps) == (0.031, 0.003, 20)
    assert colour.attack.start == "normal" and colour.attack.bn_mode == "eval"
    assert colour.model == "wrn-34-10" and colour.teacher == "resnet18-lbgat"
    assert colour.data.crop_padding == 4 and colour.data.flip is True
    assert colour.schedule.decay_epochs == [75, 90] and colour.schedule.warmup is True
    assert colour.method.params == {"alpha": 6.0, "beta": 1.0, "guidance": "mse", "mse_reduction": "mean",
                                    "student_ce": 0.0, "detach_teacher": False, "separate_bn": False}
    assert colour.attack.objective == "kl"

    digits = resolve(build_config(None, {"data.name": "mnist-5k", "method.name": "pgd-at"}), (1, 28, 28))
    assert (digits.attack.eps, digits.attack.step_size, digits.attack.steps) == (0.3, 0.01, 40)
    assert digits.attack.start == "uniform" and digits.teacher is None and digits.attack.objective == "ce"
    assert digits.data.crop_padding == 0 and digits.data.flip is False
    assert digits.schedule.warmup is False


def test_a_teacher_that_cannot_take_the_input_is_rejected() -> None:
    config = build_config(None, {"data.name": "mnist-5k", "teacher": "resnet18-lbgat"})
    with pytest.raises(ConfigError, match="resnet18-lbgat needs 3x32x32 inputs"):
        resolve(config, (1, 28, 28))


def test_paper_schedule_matches_the_official_lbgat_script() -> None:
    schedule = ScheduleConfig(epochs=100, decay_epochs=[75, 90], warmup=True)
    official = {1: 0.02, 2: 0.1, 75: 0.1, 76: 0.01, 90: 0.01, 91: 0.001, 100: 0.001}
    for epoch, lr in official.items():
        assert lr_at(epoch, 0.1, schedule) == pytest.approx(lr)


@pytest.mark.parametrize(("epochs", "decays", "first_lr"), [(20, [15, 18], 0.02), (8, [6, 7], 0.1), (1, [], 0.1)])
def test_short_schedules_scale_decays_and_skip_warmup_below_ten_epochs(epochs, decays, first_lr) -> None:
    config = resolve(build_config(None, {"schedule.epochs": epochs, "method.name": "lbgat-trades"}), (3, 32, 32))
    assert config.schedule.decay_epochs == decays
    assert lr_at(1, 0.1, config.schedule) == pytest.approx(first_lr)


def test_resolved_config_round_trips_through_yaml(tmp_path: Path) -> None:
    config = resolve(build_config(None, {"method.name": "trades"}, ["method.alpha=1"]), (3, 32, 32))
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(config))
    assert build_config(load_yaml(path)) == config


def test_yaml_files_are_read_safely(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("seed: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(path)


def test_every_shipped_recipe_builds_and_validates() -> None:
    names = list_recipes()
    assert names
    for name in names:
        validate(build_config(load_yaml(find_recipe(name))))


def test_unknown_recipe_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="neither a file nor a shipped recipe"):
        find_recipe("paper/no-such-row")
