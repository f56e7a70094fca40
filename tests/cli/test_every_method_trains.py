"""Every method trains a few steps on cifar10-mini from the command line and evaluates; the
teacher options (frozen BGAT ensembles, LBGAT teacher initialisation, separate BN) end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers.data_fixtures import cifar10_mini_root
from lbgat.checkpoints.checkpoint import load_checkpoint
from lbgat.cli import main
from lbgat.config import build_config
from lbgat.errors import ConfigError
from lbgat.methods import list_methods
from lbgat.train.setup import validate

SMALL = ["--model", "wrn-10-1", "--batch-size", "16", "--max-steps", "2", "--no-progress",
         "--set", "data.val_size=0", "--set", "attack.steps=2", "--set", "data.train_size=64"]


@pytest.fixture(scope="module")
def natural_teachers(tmp_path_factory) -> list[Path]:
    """Two briefly trained natural models of different architectures: a BGAT ensemble."""
    root = tmp_path_factory.mktemp("teachers")
    paths = []
    for arch in ("wrn-10-1", "small-cnn"):
        out = root / arch
        assert main(["train", "--method", "natural", "--dataset", "cifar10", "--data-root", str(cifar10_mini_root()),
                     *SMALL, "--model", arch, "--out", str(out)]) == 0
        paths.append(out / "last.pt")
    return paths


def train_and_evaluate(method: str, out: Path, *extra: str) -> dict:
    assert main(["train", "--method", method, "--dataset", "cifar10", "--data-root", str(cifar10_mini_root()),
                 *SMALL, *extra, "--out", str(out)]) == 0
    assert main(["eval", str(out / "last.pt"), "--attacks", "clean,pgd5", "--num-examples", "16",
                 "--check-n", "0", "--no-progress", "--out", str(out / "eval")]) == 0
    return json.loads((out / "eval" / "report.json").read_text())


@pytest.mark.parametrize("method", sorted(method.name for method in list_methods()))
def test_every_method_trains_from_the_command_line_and_evaluates(method: str, natural_teachers: list[Path],
                                                                 tmp_path: Path) -> None:
    extra: list[str] = []
    method_cls = next(cls for cls in list_methods() if cls.name == method)
    if method_cls.frozen_teacher:
        extra = [argument for path in natural_teachers for argument in ("--teacher-checkpoint", str(path))]
    elif method_cls.uses_teacher:
        extra = ["--teacher", "wrn-10-1"]
    report = train_and_evaluate(method, tmp_path / method, *extra)
    assert [row["attack"] for row in report["results"]] == ["clean", "pgd5"]
    assert report["checkpoint"]["method"] == method
    losses = [json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    assert losses[0]["event"] == "started"


def test_bgat_teacher_is_the_frozen_ensemble_of_its_checkpoints(natural_teachers: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "bgat"
    train_and_evaluate("bgat", out, "--teacher-checkpoint", str(natural_teachers[0]),
                       "--teacher-checkpoint", str(natural_teachers[1]))
    trained = load_checkpoint(out / "last.pt")
    for number, path in enumerate(natural_teachers):
        natural = load_checkpoint(path).network_state("student")
        for key, value in natural.items():
            assert torch.equal(trained.state[f"teacher.members.{number}.{key}"], value), key
    assert trained.meta["config"]["teacher_checkpoints"] == [str(path) for path in natural_teachers]


def test_lbgat_teacher_can_start_from_a_checkpoint(natural_teachers: list[Path], tmp_path: Path) -> None:
    from lbgat.data import load_dataset
    from lbgat.train.setup import build_parts, resolve

    config = build_config(None, {"method.name": "lbgat-trades", "model": "wrn-10-1", "teacher": "wrn-10-1",
                                 "data.name": "cifar10", "data.root": str(cifar10_mini_root()),
                                 "teacher_checkpoints": [str(natural_teachers[0])]}, ["data.val_size=0"])
    dataset = load_dataset("cifar10", str(cifar10_mini_root()))
    parts = build_parts(resolve(config, dataset.image_shape), dataset)
    natural = load_checkpoint(natural_teachers[0]).network_state("student")
    teacher_state = parts.method.teacher.state_dict()
    assert all(torch.equal(teacher_state[key], value) for key, value in natural.items())


def test_separate_bn_trains_one_set_of_weights(tmp_path: Path) -> None:
    out = tmp_path / "dual"
    train_and_evaluate("lbgat-trades", out, "--set", "method.separate_bn=true", "--set", "method.alpha=0")
    trained = load_checkpoint(out / "last.pt")
    assert trained.meta["config"]["teacher"] == "wrn-10-1"
    shared = [key for key in trained.network_state("student") if ".bn" not in key and "bn1" not in key]
    for key in shared:
        if "running" in key or "num_batches" in key:
            continue
        assert torch.equal(trained.state[f"student.{key}"], trained.state[f"teacher.{key}"]), key


@pytest.mark.parametrize(("settings", "overrides", "message"), [
    ({"method.name": "bgat"}, [], "frozen natural teacher: give its checkpoint"),
    ({"method.name": "lbgat-trades", "teacher_checkpoints": ["a.pt", "b.pt"]}, [], "at most one checkpoint"),
    ({"method.name": "trades", "teacher_checkpoints": ["a.pt"]}, [], "trades has no teacher"),
    ({"method.name": "lbgat", "model": "wrn-10-1", "teacher": "resnet18"}, ["method.separate_bn=true"],
     "teacher must equal model"),
    ({"method.name": "trades"}, ["attack.objective=mse"], "attack.objective must be one of"),
])
def test_teacher_settings_are_checked_before_anything_runs(settings: dict, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(build_config(None, settings, overrides))


def test_missing_teacher_checkpoint_is_one_line(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nowhere.pt"
    assert main(["train", "--method", "bgat", "--dataset", "cifar10", "--data-root", str(cifar10_mini_root()),
                 *SMALL, "--teacher-checkpoint", str(missing), "--out", str(tmp_path / "run")]) != 0
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(missing) in error
