"""data.augment=idbh-weak through the real command line: trains on cifar10-mini, resumes bit for bit, and keeps
runs from before the setting resumable; IDBH where it cannot apply is refused in one line."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from helpers.cli_runs import assert_same_training_state
from helpers.data_fixtures import cifar10_mini_root
from lbgat.checkpoints.checkpoint import load_checkpoint, save_checkpoint
from lbgat.cli import main
from lbgat.config import build_config
from lbgat.data import idbh, load_dataset
from lbgat.runtime.rng import ExampleRNG
from lbgat.train.setup import build_parts, resolve

SMALL = ["--method", "pgd-at", "--model", "tiny-cnn", "--batch-size", "16", "--no-progress",
         "--set", "data.val_size=0", "--set", "data.train_size=64", "--set", "attack.steps=2"]


def test_idbh_weak_trains_on_cifar10_mini_and_resumes_exactly(tmp_path: Path, capsys) -> None:
    common = ["train", "--dataset", "cifar10", "--data-root", str(cifar10_mini_root()), *SMALL,
              "--set", "data.augment=idbh-weak"]
    split_run, straight_run = tmp_path / "split", tmp_path / "straight"
    assert main([*common, "--max-steps", "2", "--out", str(split_run)]) == 0
    assert main([*common, "--max-steps", "5", "--out", str(split_run), "--resume"]) == 0  # across the epoch's end
    assert main([*common, "--max-steps", "5", "--out", str(straight_run)]) == 0
    assert_same_training_state(split_run / "last.pt", straight_run / "last.pt")
    data = yaml.safe_load((split_run / "config.yaml").read_text())["data"]
    assert (data["augment"], data["crop_padding"], data["flip"]) == ("idbh-weak", 0, False)

    capsys.readouterr()
    assert main([*common, "--max-steps", "6", "--out", str(split_run), "--resume",
                 "--set", "data.augment=idbh-strong"]) == 2
    assert "data.augment ('idbh-weak' in the run, 'idbh-strong' now)" in capsys.readouterr().err


def test_the_training_batches_are_the_version_asked_for() -> None:
    root = str(cifar10_mini_root())
    config = build_config(None, {"method.name": "natural", "model": "tiny-cnn", "data.name": "cifar10",
                                 "data.root": root}, ["data.val_size=0", "data.augment=idbh-svhn", "seed=4"])
    dataset = load_dataset("cifar10", root)
    batch = next(build_parts(resolve(config, dataset.image_shape), dataset).train_loader.batches(3))
    expected = idbh.augment(dataset.train.images[batch.index], ExampleRNG(4, 3, batch.index),
                            idbh.VERSIONS["idbh-svhn"])
    assert torch.equal(batch.x, expected.float() / 255)


def test_a_run_from_before_data_augment_resumes_with_crop_and_flip(tmp_path: Path) -> None:
    """A checkpoint whose settings have no data.augment resumes while the setting holds its default."""
    common = ["train", "--model", "tiny-cnn", "--method", "natural", "--batch-size", "16", "--no-progress",
              "--set", "data.val_size=0", "--set", "data.train_size=64"]
    run = tmp_path / "run"
    assert main([*common, "--max-steps", "1", "--out", str(run)]) == 0
    old = load_checkpoint(run / "last.pt")
    del old.meta["config"]["data"]["augment"]
    save_checkpoint(run / "last.pt", old.meta, old.state, old.optimizer)
    assert main([*common, "--max-steps", "2", "--out", str(run), "--resume"]) == 0
    assert load_checkpoint(run / "last.pt").meta["position"]["global_step"] == 2


def test_idbh_where_it_cannot_apply_is_one_line(tmp_path: Path, capsys) -> None:
    """Digits are never flipped; crop_padding and flip belong to crop-flip."""
    out = ["--out", str(tmp_path / "run"), "--no-progress", "--max-steps", "1"]
    assert main(["train", "--dataset", "mnist-5k", "--set", "data.augment=idbh-weak", *out]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "data.augment=idbh-weak flips images horizontally, which mnist-5k does not allow (digits); "
        "use data.augment=crop-flip")
    assert main(["train", "--set", "data.augment=idbh-svhn", "--set", "data.crop_padding=4", *out]) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "data.augment=idbh-svhn flips and crop-shifts by itself" in message
    assert main(["train", "--set", "data.augment=autoaugment", *out]) == 2
    assert "data.augment must be one of crop-flip, idbh-weak, idbh-strong, idbh-svhn" in capsys.readouterr().err
    assert not (tmp_path / "run" / "last.pt").exists()
