"""The method's training attack takes each attack setting by name, explicitly: a renamed
setting is an error, never a silent fall-back to the attack's default."""

from __future__ import annotations

import dataclasses

import pytest

from lbgat.config import AttackConfig, build_config
from lbgat.methods import TrainAttack
from lbgat.train.setup import resolve, train_attack

# Every attack setting away from TrainAttack's defaults, so that a field left at its default shows.
GIVEN = {"attack.eps": 0.02, "attack.step_size": 0.004, "attack.steps": 3, "attack.start": "none",
         "attack.start_std": 0.5, "attack.bn_mode": "train", "attack.objective": "cw", "attack.iterate": "delta",
         "compile": True, "compile_mode": "reduce-overhead"}


def resolved_config():
    overrides = [f"{key}={value}" for key, value in GIVEN.items()]
    return resolve(build_config(None, {"method.name": "pgd-at"}, overrides), (3, 32, 32))


def test_every_field_of_the_training_attack_comes_from_its_setting() -> None:
    attack = train_attack(resolved_config())
    expected = {key.removeprefix("attack."): value for key, value in GIVEN.items()}
    expected["compiled"] = expected.pop("compile")
    assert {field.name for field in dataclasses.fields(TrainAttack)} == set(expected), \
        "a new TrainAttack field: map it in lbgat.train.setup.train_attack and give it a value here"
    assert dataclasses.asdict(attack) == expected


def test_a_renamed_attack_setting_cannot_silently_fall_back() -> None:
    """start_std renamed in the config: the attack is refused instead of starting from the default 0.001."""
    config = resolved_config()
    fields = [("start_scale" if field.name == "start_std" else field.name, field.type)
              for field in dataclasses.fields(AttackConfig)]
    Renamed = dataclasses.make_dataclass("Renamed", fields)
    values = dataclasses.asdict(config.attack)
    values["start_scale"] = values.pop("start_std")
    with pytest.raises(AttributeError, match="start_std"):
        train_attack(dataclasses.replace(config, attack=Renamed(**values)))
