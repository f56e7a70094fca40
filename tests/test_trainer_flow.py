"""The trainer's local shape (issue 14 item 1, in part): the config is resolved once, the steps' terms
are accounted in one object, and the stop flag exists from construction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lbgat.config import build_config
from lbgat.train import train
from lbgat.train import trainer as trainer_module
from lbgat.train.setup import build_parts, load_data, resolve
from lbgat.train.trainer import LogInterval, Trainer

TINY = {"method.name": "natural", "model": "tiny-cnn", "batch_size": 8}
TINY_DATA = ["data.val_size=0", "data.train_size=16"]


def test_train_resolves_the_config_once(tmp_path: Path, monkeypatch) -> None:
    """issue 14 item 1: `_train` resolves the config once, on one path, for a dataset of known shape."""
    calls: list[tuple[int, int, int]] = []
    real_resolve = trainer_module.resolve

    def counting_resolve(config, image_shape):
        calls.append(image_shape)
        return real_resolve(config, image_shape)

    monkeypatch.setattr(trainer_module, "resolve", counting_resolve)
    config = build_config(None, {**TINY, "out": str(tmp_path / "run"), "max_steps": 1}, TINY_DATA)
    result = train(config, progress=False)
    assert result.position.global_step == 1
    assert calls == [(1, 28, 28)]


def test_log_interval_sums_in_float64_and_weights_rank_shares() -> None:
    """issue 14 item 1: one accounting object for the log interval (terms, steps, start time)."""
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
    """issue 14 item 1: stop_requested is initialised in __init__, not first set inside the signal helper."""
    config = build_config(None, {**TINY, "out": str(tmp_path / "run")}, TINY_DATA)
    dataset = load_data(config)
    trainer = Trainer(build_parts(resolve(config, dataset.image_shape), dataset), tmp_path / "run", progress=False)
    assert trainer.stop_requested is None
