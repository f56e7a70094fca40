"""Checkpoints: atomic writes, strict loading with clear key lists, and no code execution on load."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

import lbgat
from lbgat.checkpoints.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
from lbgat.checkpoints.model_spec import ModelSpec
from lbgat.errors import CheckpointError

SPEC = ModelSpec("tiny-cnn", num_classes=10, in_channels=1, image_size=28)


def write_checkpoint(path: Path) -> torch.nn.Module:
    model = SPEC.build()
    state = {f"student.{key}": value for key, value in model.state_dict().items()}
    save_checkpoint(path, {"student": SPEC.to_dict(), "config": {}}, state)
    return model


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_round_trip_and_load_model(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    model = write_checkpoint(path)
    loaded = lbgat.load_model(path)
    assert not loaded.training
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))
    assert not list(tmp_path.glob(".*.tmp")), "temporary files are cleaned up"
    assert oct(path.stat().st_mode & 0o777) != oct(0o600), "not left with mkstemp's private mode"


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"lbgat_checkpoint": 1, "meta": "{}", "state": {"x": Exploit(marker)}}, path)
    with pytest.raises(CheckpointError, match="refusing to load") as error:
        load_checkpoint(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(CheckpointError):
        lbgat.load_model(path)
    assert not marker.exists()


def test_a_plain_pickle_file_is_refused_too(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(Exploit(marker)))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_files_are_named_in_one_line(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "model.pt"
    write_checkpoint(path)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"<html>not a checkpoint</html>",
                      "empty": b""}[damage])
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_a_plain_state_dict_is_not_mistaken_for_an_lbgat_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "official.pt"
    torch.save(SPEC.build().state_dict(), path)
    with pytest.raises(CheckpointError, match="not an lbgat checkpoint"):
        load_checkpoint(path)


def test_strict_loading_lists_missing_and_unexpected_keys(tmp_path: Path) -> None:
    model = SPEC.build()
    state = model.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["classifier.fc2.bias"]
    with pytest.raises(CheckpointError, match="missing keys: classifier.fc2.bias; unexpected keys: extra.weight"):
        load_state_strict(model, state, tmp_path / "x.pt")


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "last.pt"
    write_checkpoint(path)
    before = path.read_bytes()

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        write_checkpoint(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
