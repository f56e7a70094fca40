"""The trainer's local shape: the config is resolved once, the steps' terms
are accounted in one object, and the stop flag exists from construction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers.data_fixtures import write_image_folder
from lbgat.config import build_config
from lbgat.errors import ConfigError, DataError
from lbgat.train import train
from lbgat.train import trainer as trainer_module
from lbgat.train.accounting import LogInterval
from lbgat.train.setup import build_parts, load_data, resolve
from lbgat.train.trainer import Trainer

TINY = {"method.name": "natural", "model": "tiny-cnn", "batch_size": 8}
TINY_DATA = ["data.val_size=0", "data.train_size=16"]


def test_train_resolves_the_config_once(tmp_path: Path, monkeypatch) -> None:
    """`_train` resolves the config once, on one path, for a dataset of known shape."""
    calls: list[tuple[int, int, int]] = []
    real_resolve = trainer_module.resolve

    def counting_resolve(config, image_shape, method):
        calls.append(image_shape)
        return real_resolve(config, image_shape, method)

    monkeypatch.setattr(trainer_module, "resolve", counting_resolve)
    config = build_config(None, {**TINY, "out": str(tmp_path / "run"), "max_steps": 1}, TINY_DATA)
    result = train(config, progress=False)
    assert result.position.global_step == 1
    assert calls == [(1, 28, 28)]


def test_a_folder_is_read_before_its_run_is_resolved_once(tmp_path: Path, monkeypatch) -> None:
    """A user's folder tells its shape only once read: it is read first, then the config
    is resolved once for that shape; a missing folder is reported before a run-directory clash."""
    calls: list[tuple[int, int, int]] = []
    real_resolve = trainer_module.resolve
    monkeypatch.setattr(trainer_module, "resolve", lambda config, shape, method: calls.append(shape) or real_resolve(
        config, shape, method))
    write_image_folder(tmp_path / "images", per_class=4, size=(8, 8))
    settings = {**TINY, "data.name": "folder", "data.root": str(tmp_path / "images"), "out": str(tmp_path / "run"),
                "max_steps": 1}
    result = train(build_config(None, settings, TINY_DATA), progress=False)
    assert result.position.global_step == 1
    assert calls == [(3, 8, 8)]
    missing = {**settings, "data.root": str(tmp_path / "missing")}
    with pytest.raises(DataError, match="does not exist"):
        train(build_config(None, missing, TINY_DATA), progress=False)
    # A registered dataset's shape is known up front: the run-directory clash comes before reading it.
    known = {**TINY, "data.name": "cifar10", "data.root": str(tmp_path / "missing"), "out": str(tmp_path / "run")}
    with pytest.raises(ConfigError, match="already holds a run"):
        train(build_config(None, known, TINY_DATA), progress=False)


def test_log_interval_sums_in_float64_and_weights_rank_shares() -> None:
    """One accounting object for the log interval (terms, steps, start time)."""
    interval = LogInterval()
    assert (interval.sums, interval.steps, interval.started) == ({}, 0, None)
    interval.begin_step()
    started = interval.started
    assert started is not None
    interval.add({"loss": torch.tensor(0.5)}, None)
    interval.begin_step()  # the interval's clock starts at its first step only
    interval.add({"loss": torch.tensor(0.25)}, 0.5)
    assert interval.started == started
    assert interval.steps == 2
    assert interval.sums["loss"].dtype == torch.float64
    assert float(interval.sums["loss"]) == pytest.approx(0.625)


def test_a_trainer_has_no_stop_request_from_the_start(tmp_path: Path) -> None:
    """Stop_requested is initialised in __init__, not first set inside the signal helper."""
    config = build_config(None, {**TINY, "out": str(tmp_path / "run")}, TINY_DATA)
    dataset = load_data(config)
    trainer = Trainer(build_parts(resolve(config, dataset.image_shape), dataset), tmp_path / "run", progress=False)
    assert trainer.stop_requested is None
