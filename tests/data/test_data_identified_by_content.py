"""A run's data is identified by its content, not its path."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from helpers.data_fixtures import write_cifar10
from lbgat.checkpoints.checkpoint import load_checkpoint, save_checkpoint
from lbgat.cli import main
from lbgat.data import load_dataset


def train_args(data_root: str, out: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "--method", "natural", "--model", "tiny-cnn", "--dataset", "cifar10", "--data-root", data_root,
            "--batch-size", "4", "--max-steps", str(steps), "--no-progress", "--out", str(out),
            "--set", "data.val_size=0", *extra]


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def trained(tmp_path: Path, monkeypatch, capsys) -> Path:
    """A one-step run on generated CIFAR-10 in tmp_path/data_mv, started with a relative --data-root."""
    monkeypatch.chdir(tmp_path)
    write_cifar10(tmp_path / "data_mv", per_batch=4)
    assert main(train_args("data_mv", tmp_path / "run", 1)) == 0
    capsys.readouterr()
    return tmp_path / "run"


def test_resume_with_the_data_folder_spelled_differently_or_moved(trained: Path, tmp_path: Path, capsys) -> None:
    """`./data_mv/`, an absolute path, and the folder after a move all resume."""
    steps = 1
    for spelling in ("./data_mv/", str(tmp_path / "data_mv"), "moved/data"):
        if spelling == "moved/data":
            (tmp_path / "moved").mkdir()
            shutil.move(tmp_path / "data_mv", tmp_path / "moved" / "data")
        steps += 1
        assert main(train_args(spelling, trained, steps, "--resume")) == 0, capsys.readouterr().err
        assert load_checkpoint(trained / "last.pt").meta["position"]["global_step"] == steps
    assert "warning" not in capsys.readouterr().err
    meta = load_checkpoint(trained / "last.pt").meta
    moved = load_dataset("cifar10", tmp_path / "moved" / "data")
    assert meta["dataset"]["fingerprint"] == moved.fingerprint
    assert meta["dataset"]["root"] == str((tmp_path / "moved" / "data").resolve())


def test_resume_with_different_data_is_refused_in_one_line(trained: Path, tmp_path: Path, capsys) -> None:
    """Other content under the same path is refused, naming the split; the run is untouched."""
    before = digests(trained)
    shutil.rmtree(tmp_path / "data_mv")
    write_cifar10(tmp_path / "data_mv", per_batch=4, seed=1)  # same layout and sizes, other images
    assert main(train_args("data_mv", trained, 2, "--resume")) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message
    assert "--resume with different data: the train split of cifar10" in message and "fingerprint" in message
    assert digests(trained) == before


def test_a_checkpoint_from_before_fingerprints_resumes_with_a_warning(trained: Path, capsys) -> None:
    """Nothing can be checked for an older run; it resumes and says so."""
    old = load_checkpoint(trained / "last.pt")
    del old.meta["dataset"]["fingerprint"]
    save_checkpoint(trained / "last.pt", old.meta, old.state, old.optimizer)
    assert main(train_args("./data_mv", trained, 2, "--resume")) == 0
    assert "records no data fingerprint" in capsys.readouterr().err


def test_fingerprint_is_the_content_not_the_files(tmp_path: Path) -> None:
    """Other serialisations of the same arrays match; other arrays do not."""
    write_cifar10(tmp_path / "a")
    write_cifar10(tmp_path / "b", legacy_numpy_names=True)  # other file bytes, same arrays
    write_cifar10(tmp_path / "c", seed=1)
    batch = "cifar-10-batches-py/data_batch_1"
    assert (tmp_path / "a" / batch).read_bytes() != (tmp_path / "b" / batch).read_bytes()
    a, b, c = (load_dataset("cifar10", tmp_path / name) for name in "abc")
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint["train"] != c.fingerprint["train"] and a.fingerprint["test"] != c.fingerprint["test"]
    assert all(len(value) == 64 for value in a.fingerprint.values())


def test_eval_report_records_the_test_split_fingerprint(trained: Path, tmp_path: Path, capsys) -> None:
    """Report.json says which data was evaluated, by content."""
    out = tmp_path / "eval"
    assert main(["eval", str(trained / "last.pt"), "--num-examples", "4", "--batch-size", "4", "--check-n", "0",
                 "--no-progress", "--out", str(out)]) == 0
    protocol = json.loads((out / "report.json").read_text())["protocol"]
    assert protocol["data_fingerprint"] == load_dataset("cifar10", tmp_path / "data_mv").test.fingerprint
