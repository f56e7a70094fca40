"""Mixed precision, channels-last and torch.compile: each computes what fp32/eager computes (within the
precision's own rounding), attacks stay in fp32 and inside the threat model, and runs resume exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from lbgat.attacks import pgd
from lbgat.checkpoints.checkpoint import load_checkpoint
from lbgat.config import build_config
from lbgat.errors import ConfigError
from lbgat.runtime.precision import Precision
from lbgat.runtime.rng import ExampleRNG
from lbgat.train import train

EPS = 0.1
# torch.compile on CPU writes and builds C++.
needs_compiler = pytest.mark.skipif(not any(shutil.which(name) for name in ("g++", "c++", "clang++")),
                                    reason="no C++ compiler for torch.compile")


def tiny_run(tmp_path: Path, name: str, *overrides: str, **flags) -> Path:
    """pgd-at on 640 embedded digits, tiny-cnn, batches of 64 (10 steps per epoch), no held-out set."""
    out = tmp_path / name
    config = build_config(None, {"method.name": "pgd-at", "model": "tiny-cnn", "batch_size": 64, "out": str(out),
                                 "schedule.epochs": 3, **flags},
                          ["data.train_size=640", "data.val_size=0", "attack.steps=3", "optim.lr=0.02", *overrides])
    train(config, progress=False)
    return out


def epoch_losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [record["train"]["loss"] for record in records if record["event"] == "epoch"]


def model_and_batch() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 8 * 8, 10))
    return model, torch.rand(6, 3, 8, 8), torch.randint(0, 10, (6,))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_an_attack_under_autocast_steps_and_projects_in_fp32(dtype) -> None:
    model, x, y = model_and_batch()
    rng = ExampleRNG(0, 0, torch.arange(6))
    with torch.autocast("cpu", dtype=dtype):
        x_adv = pgd(model, x, y, eps=EPS, step_size=0.03, steps=5, rng=rng)
    assert x_adv.dtype == torch.float32
    assert float((x_adv - x).abs().max()) <= EPS + 1e-7
    assert 0.0 <= float(x_adv.min()) and float(x_adv.max()) <= 1.0
    # Same steps as fp32 wherever the low-precision gradient has the same sign: most of the pixels.
    reference = pgd(model, x, y, eps=EPS, step_size=0.03, steps=5, rng=rng)
    assert float((x_adv == reference).float().mean()) > 0.5


def test_bf16_training_tracks_fp32_within_five_percent(tmp_path: Path) -> None:
    # A setting where the tiny model really learns (its loss falls from 2.31 to about 0.6).
    learning = ["attack.eps=0.1", "optim.lr=0.1", "schedule.epochs=6"]
    full = epoch_losses(tiny_run(tmp_path, "fp32", *learning))
    half = epoch_losses(tiny_run(tmp_path, "bf16", *learning, precision="bf16"))
    assert full[-1] < 0.5 * full[0] and half[-1] < 0.5 * half[0]
    gaps = [abs(b - f) / f for f, b in zip(full, half, strict=True)]
    assert sum(gaps) / len(gaps) <= 0.05, gaps  # measured: 1.2 % on average, at most 3.5 % in one epoch
    assert half != full  # it really ran in bf16
    assert load_checkpoint(tmp_path / "bf16" / "last.pt").meta["config"]["precision"] == "bf16"


def test_fp16_keeps_its_gradient_scaler_across_a_resume(tmp_path: Path) -> None:
    whole = tiny_run(tmp_path, "whole", precision="fp16", **{"schedule.epochs": 1})
    tiny_run(tmp_path, "halves", precision="fp16", max_steps=4, **{"schedule.epochs": 1})
    halves = tmp_path / "halves"
    saved = load_checkpoint(halves / "last.pt").meta["grad_scaler"]
    assert saved["scale"] > 0 and "_growth_tracker" in saved
    config = build_config(None, {"method.name": "pgd-at", "model": "tiny-cnn", "batch_size": 64, "out": str(halves),
                                 "schedule.epochs": 1, "precision": "fp16"},
                          ["data.train_size=640", "data.val_size=0", "attack.steps=3", "optim.lr=0.02"])
    train(config, resume=True, progress=False)
    one, two = load_checkpoint(whole / "last.pt"), load_checkpoint(halves / "last.pt")
    assert one.meta["grad_scaler"] == two.meta["grad_scaler"]
    assert all(torch.equal(one.state[key], two.state[key]) for key in one.state if not key.startswith("rng."))


def test_changing_precision_on_resume_is_refused(tmp_path: Path) -> None:
    run = tiny_run(tmp_path, "run", max_steps=2)
    config = build_config(None, {"method.name": "pgd-at", "model": "tiny-cnn", "batch_size": 64, "out": str(run),
                                 "schedule.epochs": 3, "precision": "bf16"},
                          ["data.train_size=640", "data.val_size=0", "attack.steps=3", "optim.lr=0.02"])
    with pytest.raises(ConfigError, match="precision"):
        train(config, resume=True, progress=False)


def test_channels_last_computes_the_same_training(tmp_path: Path) -> None:
    plain = load_checkpoint(tiny_run(tmp_path, "plain", **{"schedule.epochs": 1}) / "last.pt").state
    last = load_checkpoint(tiny_run(tmp_path, "last", channels_last=True, **{"schedule.epochs": 1}) / "last.pt").state
    for key, value in plain.items():
        if value.is_floating_point() and not key.startswith("rng."):
            assert torch.allclose(last[key], value, rtol=1e-4, atol=1e-6), key


def test_unknown_precision_is_one_line() -> None:
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16, fp16"):
        Precision("fp8", torch.device("cpu"))


@needs_compiler
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_the_compiled_attack_step_equals_the_eager_one(mode: str) -> None:
    """In each compile mode (reduce-overhead's CUDA graphs do not exist on CPU: it compiles as default)."""
    model, x, y = model_and_batch()
    model.eval()
    rng = ExampleRNG(0, 0, torch.arange(6))
    eager = pgd(model, x, y, eps=EPS, step_size=0.03, steps=4, rng=rng)
    compiled = pgd(model, x, y, eps=EPS, step_size=0.03, steps=4, rng=rng, compiled=True, compile_mode=mode)
    assert torch.equal(compiled, eager)


@pytest.mark.slow
@needs_compiler
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compile_trains_the_same_model(tmp_path: Path, mode: str) -> None:
    plain = load_checkpoint(tiny_run(tmp_path, "plain", **{"schedule.epochs": 1}) / "last.pt").state
    compiled = load_checkpoint(tiny_run(tmp_path, "compiled", compile=True, compile_mode=mode,
                                        **{"schedule.epochs": 1}) / "last.pt")
    assert compiled.meta["config"]["compile"] is True and compiled.meta["config"]["compile_mode"] == mode
    for key, value in plain.items():
        if value.is_floating_point() and not key.startswith("rng."):
            assert torch.allclose(compiled.state[key], value, rtol=1e-4, atol=1e-6), key


def test_compile_without_a_compiler_is_one_line(monkeypatch) -> None:
    from lbgat.train import setup

    monkeypatch.setattr(setup.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="needs a C[+][+] compiler"):
        setup.check_compile_toolchain(torch.device("cpu"))


def test_evaluation_in_bf16_only_when_asked_and_labelled(tmp_path: Path) -> None:
    from lbgat.cli import main

    run = tiny_run(tmp_path, "run", max_steps=2)
    common = ["eval", str(run / "last.pt"), "--attacks", "clean,pgd5", "--num-examples", "40", "--check-n", "0",
              "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "fp32")]) == 0
    assert main([*common, "--precision", "bf16", "--out", str(tmp_path / "bf16")]) == 0
    of_record = json.loads((tmp_path / "fp32" / "report.json").read_text())
    asked = json.loads((tmp_path / "bf16" / "report.json").read_text())
    assert of_record["protocol"]["dtype"] == "float32"
    assert asked["protocol"]["dtype"].startswith("bf16 autocast")
    clean = {report["protocol"]["dtype"]: report["results"][0]["accuracy"] for report in (of_record, asked)}
    assert abs(clean["float32"] - clean[asked["protocol"]["dtype"]]) <= 0.1
