"""``lbgat eval``, ``lbgat export`` and ``load_model`` take the averaged weights a run kept (``--weights``,
default auto: the average once it has started), say which weights they evaluated or exported, and refuse in one
line weights a file does not hold; training records the average's held-out accuracy and selects best.pt by it, and
refuses average settings that mean nothing in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import lbgat
from lbgat.checkpoints.checkpoint import load_checkpoint
from lbgat.cli import main

# Natural training of tiny-cnn on the embedded digits: 2 epochs of 2 steps, validated on 32 held-out images.
RUN = ["train", "--method", "natural", "--model", "tiny-cnn", "--batch-size", "32", "--epochs", "2", "--no-progress",
       "--set", "data.train_size=64", "--set", "data.val_size=32", "--set", "val.steps=1"]
EVAL = ["--attacks", "clean", "--num-examples", "16", "--check-n", "0", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("averaged")
    # ema: averaging and the first validation in epoch 2, so best.pt is chosen by the average's accuracy.
    settings = {"ema": ["--average", "ema", "--set", "average.start=1", "--set", "val.every=2"],
                "not-started": ["--average", "swa", "--set", "average.start=1", "--max-steps", "1"],
                "none": []}
    for name, extra in settings.items():
        assert main([*RUN, *extra, "--out", str(root / name)]) == 0
    return {name: root / name for name in settings}


def one_line_refusal(capsys: pytest.CaptureFixture, *arguments: str) -> str:
    assert main(list(arguments)) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    return error


def same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    return all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(),
                                                 strict=True))


def test_training_validates_the_average_and_selects_best_by_it(runs: dict[str, Path]) -> None:
    epochs = [json.loads(line) for line in (runs["ema"] / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["event"] == "epoch"]
    assert epochs[0]["val"] is None and epochs[0]["val_ema"] is None  # val.every 2
    assert set(epochs[1]["val_ema"]) == {"clean_acc", "robust_acc", "n"} and epochs[1]["val"] is not None
    best = load_checkpoint(runs["ema"] / "best.pt")
    assert best.meta["best"] == {"epoch": 2, **epochs[1]["val_ema"], "weights": "ema"}
    last = load_checkpoint(runs["ema"] / "last.pt")
    assert last.meta["average"] == {"kind": "ema", "updates": 2}
    assert all(best.state[key].equal(last.state[key]) for key in last.state if key.startswith("average."))


def test_eval_takes_the_average_by_default_and_says_so(runs: dict[str, Path]) -> None:
    checkpoint = runs["ema"] / "last.pt"
    assert main(["eval", str(checkpoint), *EVAL]) == 0
    report = json.loads((runs["ema"] / "eval-last" / "report.json").read_text())
    assert report["checkpoint"]["weights"] == "ema"
    assert report["checkpoint"]["weights_description"].startswith("ema: exponential moving average, decay 0.995")
    assert "Weights evaluated: ema: exponential moving average" in (runs["ema"] / "eval-last" / "report.md").read_text()
    assert main(["eval", str(checkpoint), *EVAL, "--weights", "raw", "--out", str(runs["ema"] / "eval-raw")]) == 0
    assert json.loads((runs["ema"] / "eval-raw" / "report.json").read_text())["checkpoint"]["weights"] == "raw"

    stored = load_checkpoint(checkpoint)
    averaged, raw = lbgat.load_model(checkpoint), lbgat.load_model(checkpoint, weights="raw")
    assert all(torch.equal(value, stored.state[f"average.{key}"]) for key, value in averaged.state_dict().items())
    assert all(torch.equal(value, stored.state[f"student.{key}"]) for key, value in raw.state_dict().items())
    assert not same_weights(averaged, raw)
    # Before its start the average is the raw weights: auto takes those.
    late = runs["not-started"] / "last.pt"
    assert same_weights(lbgat.load_model(late), lbgat.load_model(late, weights="raw"))


def test_export_takes_the_average_by_default_and_its_card_says_so(runs: dict[str, Path], tmp_path: Path) -> None:
    checkpoint = runs["ema"] / "last.pt"
    assert main(["eval", str(checkpoint), *EVAL, "--out", str(runs["ema"] / "eval-card")]) == 0
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "ema")]) == 0
    with safe_open(str(tmp_path / "ema" / "model.safetensors"), framework="pt") as file:
        assert file.metadata()["weights"] == "ema"
    card = (tmp_path / "ema" / "README.md").read_text()
    assert "its ema weights" in card and "| which weights | ema: exponential moving average" in card
    assert "### eval-card" in card and "### eval-raw" not in card  # only evaluations of the same weights
    assert same_weights(lbgat.load_model(tmp_path / "ema"), lbgat.load_model(checkpoint, weights="ema"))

    assert main(["export", str(checkpoint), "--weights", "raw", "--out", str(tmp_path / "raw")]) == 0
    assert "its raw weights" in (tmp_path / "raw" / "README.md").read_text()
    assert same_weights(lbgat.load_model(tmp_path / "raw"), lbgat.load_model(checkpoint, weights="raw"))
    assert main(["eval", str(tmp_path / "raw"), *EVAL, "--weights", "raw"]) == 0


def test_weights_a_file_does_not_hold_are_refused_in_one_line(runs: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    ema, none, late = (runs[name] / "last.pt" for name in ("ema", "none", "not-started"))
    assert "holds ema weights, not swa: use --weights ema (or raw)" in one_line_refusal(
        capsys, "eval", str(ema), *EVAL, "--weights", "swa", "--out", str(tmp_path / "e1"))
    assert "holds no ema weights: its run trained without weight averaging" in one_line_refusal(
        capsys, "eval", str(none), *EVAL, "--weights", "ema", "--out", str(tmp_path / "e2"))
    assert "swa average has not started (it starts after epoch 1; the checkpoint is at epoch 0)" in one_line_refusal(
        capsys, "eval", str(late), *EVAL, "--weights", "swa", "--out", str(tmp_path / "e3"))
    assert "holds no swa weights" in one_line_refusal(capsys, "export", str(none), "--weights", "swa",
                                                      "--out", str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
    assert main(["export", str(ema), "--out", str(tmp_path / "exported")]) == 0
    capsys.readouterr()
    assert "holds only ema weights, not raw; export the checkpoint again with --weights raw" in one_line_refusal(
        capsys, "eval", str(tmp_path / "exported"), *EVAL, "--weights", "raw", "--out", str(tmp_path / "e4"))
    plain = tmp_path / "plain.pt"
    torch.save(lbgat.load_model(none).state_dict(), plain)
    assert "a plain state dict holds one set of weights" in one_line_refusal(
        capsys, "eval", str(plain), "--model", "tiny-cnn", "--dataset", "mnist-5k", *EVAL, "--weights", "ema")
    with pytest.raises(lbgat.errors.CheckpointError, match="holds no swa weights"):
        lbgat.load_model(none, weights="swa")


@pytest.mark.parametrize(("settings", "refusal"), [
    (["--set", "average.decay=0.9"], "average.decay is set, but average.kind is none: choose --average ema or swa"),
    (["--average", "ema", "--set", "average.decay=1"], "average.decay must be < 1, got 1"),
    (["--average", "ema", "--set", "average.start=2"], "average.start is 2, but the run trains 2 epochs"),
    (["--average", "swa", "--set", "average.warmup=true"], "average.warmup ramps a decay, but swa with average.decay"),
    (["--average", "swa", "--set", "average.bn=mean"], "average.bn must be one of copy, ema, recompute, got 'mean'"),
])
def test_average_settings_that_mean_nothing_are_refused_in_one_line(settings: list[str], refusal: str, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    assert refusal in one_line_refusal(capsys, *RUN, *settings, "--out", str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
