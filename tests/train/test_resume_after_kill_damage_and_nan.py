"""Reliability: a real process killed (SIGKILL) or stopped (SIGTERM/SIGINT) resumes bit-for-bit,
damaged checkpoints fall back, malicious pickles are refused on every path, divergence is handled,
and bad settings fail before any work with earlier output intact."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import lbgat
from helpers.cli_runs import assert_same_training_state, steps_saved
from lbgat.checkpoints.checkpoint import load_checkpoint
from lbgat.cli import main
from lbgat.config import build_config
from lbgat.errors import CheckpointError
from lbgat.train import train

# pgd-at on the embedded digits: random crops are off, but attack starts and shuffling are random,
# so an exact resume needs every RNG stream and the loader position back.
RUN = ["train", "--method", "pgd-at", "--model", "tiny-cnn", "--batch-size", "32", "--epochs", "3",
       "--no-progress", "--set", "data.val_size=0", "--set", "data.train_size=320", "--set", "attack.steps=20",
       "--checkpoint-every", "3"]
TOTAL_STEPS = 30


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def lbgat_process(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lbgat", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))


def wait_for_checkpoint(path: Path, process: subprocess.Popen, at_least: int) -> None:
    deadline = time.monotonic() + 300
    while steps_saved(path) < at_least:
        assert process.poll() is None, f"finished before step {at_least}: {process.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main([*RUN, "--out", str(out)]) == 0
    return out


def test_sigkill_at_an_arbitrary_step_then_resume_is_bit_identical(straight_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    process = lbgat_process(*RUN, "--out", str(out))
    wait_for_checkpoint(out / "last.pt", process, at_least=7)  # mid-epoch: 10 steps per epoch
    time.sleep(0.15)  # somewhere inside a later step
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    killed_at = steps_saved(out / "last.pt")
    assert killed_at < TOTAL_STEPS

    resumed = lbgat_process(*RUN, "--out", str(out), "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    assert_same_training_state(out / "last.pt", straight_run / "last.pt")  # parameters bitwise, optimiser too
    events = [json.loads(line)["event"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "resumed" in events


@pytest.mark.parametrize(("signal_number", "status", "name"), [(signal.SIGTERM, 143, "SIGTERM"),
                                                                (signal.SIGINT, 130, "SIGINT")])
def test_stop_signal_finishes_the_step_saves_and_exits(straight_run: Path, tmp_path: Path, signal_number: int,
                                                       status: int, name: str) -> None:
    out = tmp_path / "run"
    process = lbgat_process(*RUN, "--out", str(out))
    wait_for_checkpoint(out / "last.pt", process, at_least=3)
    process.send_signal(signal_number)
    assert process.wait(timeout=120) == status
    stderr = process.stderr.read()
    assert f"{name} received: stopped after step" in stderr and "--resume" in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "stopped" and last["reason"] == name
    assert steps_saved(out / "last.pt") == last["global_step"]  # the step in progress was finished and saved

    assert main([*RUN, "--out", str(out), "--resume"]) == 0
    assert_same_training_state(out / "last.pt", straight_run / "last.pt")


def test_resume_falls_back_to_the_previous_checkpoint_when_the_last_is_damaged(straight_run: Path, tmp_path: Path,
                                                                               capsys) -> None:
    out = tmp_path / "run"
    assert main([*RUN, "--out", str(out), "--max-steps", "16"]) == 0
    assert steps_saved(out / "last.pt") == 16 and steps_saved(out / "last.prev.pt") == 15
    data = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(data[: len(data) // 2])  # a write cut short by a full disk or a crash
    capsys.readouterr()

    assert main([*RUN, "--out", str(out), "--resume"]) == 0
    warning = capsys.readouterr().err
    assert f"{out / 'last.pt'} is damaged or truncated" in warning
    assert f"resuming from the previous checkpoint {out / 'last.prev.pt'}" in warning
    assert_same_training_state(out / "last.pt", straight_run / "last.pt")


def test_a_damaged_checkpoint_is_a_clear_error_naming_the_file(tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"PK\x03\x04 not really a checkpoint")
    assert main(["eval", str(broken), "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(broken) in error and "damaged" in error


def malicious(path: Path, marker: Path) -> Path:
    torch.save({"lbgat_checkpoint": 1, "meta": "{}", "state": {"weight": Exploit(marker)}}, path)
    return path


def test_a_malicious_pickle_is_refused_by_every_loading_path(straight_run: Path, tmp_path: Path, capsys) -> None:
    marker = tmp_path / "PWNED"
    bad = malicious(tmp_path / "evil.pt", marker)
    # lbgat eval, with and without --model (plain state dict path)
    assert main(["eval", str(bad), "--no-progress"]) == 2
    assert main(["eval", str(bad), "--model", "tiny-cnn", "--dataset", "mnist-5k", "--no-progress"]) == 2
    # the Python API
    with pytest.raises(CheckpointError, match="refusing to load"):
        lbgat.load_model(bad)
    with pytest.raises(CheckpointError, match="refusing to load"):
        lbgat.load_model(bad, arch="tiny-cnn", num_classes=10, in_channels=1, image_size=28)
    # --resume: a tampered last.pt is refused, and never skipped over in favour of last.prev.pt
    run = tmp_path / "run"
    assert main([*RUN, "--out", str(run), "--max-steps", "4"]) == 0
    malicious(run / "last.pt", marker)
    assert main([*RUN, "--out", str(run), "--resume"]) == 2
    # a BGAT teacher and an LBGAT teacher initialisation
    assert main(["train", "--method", "bgat", "--model", "tiny-cnn", "--teacher-checkpoint", str(bad),
                 "--out", str(tmp_path / "bgat"), "--no-progress", "--max-steps", "1"]) == 2
    assert main(["train", "--method", "lbgat", "--model", "tiny-cnn", "--teacher", "tiny-cnn",
                 "--teacher-checkpoint", str(bad), "--out", str(tmp_path / "lbgat"), "--no-progress",
                 "--max-steps", "1"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 5, errors  # two evals, the resume, two teachers: one line each
    assert all("refusing to load" in line and ("evil.pt" in line or "last.pt" in line) for line in errors), errors
    assert not marker.exists()


def test_a_malicious_dataset_batch_file_is_refused(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "PWNED"
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    import pickle

    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"):
        (batches / name).write_bytes(pickle.dumps(Exploit(marker)))
    assert main(["train", "--dataset", "cifar10", "--data-root", str(tmp_path), "--no-progress",
                 "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "cifar-10-batches-py" in error
    assert not marker.exists()


class NaNAtStep:
    """Wraps a method's forward so that chosen global steps produce a NaN loss."""

    def __init__(self, steps: set[int]) -> None:
        self.steps = steps
        self.count = 0

    def __call__(self, original):
        def forward(batch):
            terms = original(batch)
            self.count += 1
            if self.count in self.steps:
                terms = {name: value * float("nan") for name, value in terms.items()}
            return terms
        return forward


def run_with_nans(tmp_path: Path, monkeypatch, steps: set[int], on_nan: str):
    from lbgat.train import trainer as trainer_module

    real_build = trainer_module.build_parts

    def build_parts_with_nans(*args, **kwargs):
        parts = real_build(*args, **kwargs)
        parts.method.forward = NaNAtStep(steps)(parts.method.forward)
        return parts

    monkeypatch.setattr(trainer_module, "build_parts", build_parts_with_nans)
    config = build_config(None, {"method.name": "natural", "model": "tiny-cnn", "batch_size": 32,
                                 "out": str(tmp_path / "run"), "schedule.epochs": 2, "checkpoint_every": 2,
                                 "on_nan": on_nan}, ["data.val_size=0", "data.train_size=320", "log_every=1"])
    return train(config, progress=False)


def test_a_nan_loss_stops_with_position_and_terms_keeping_the_last_good_checkpoint(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    from lbgat.train.errors import TrainingDiverged

    with pytest.raises(TrainingDiverged, match=r"non-finite in epoch 1 by step 5 \(loss nan, ce nan\)"):
        run_with_nans(tmp_path, monkeypatch, {5}, "stop")
    good = load_checkpoint(tmp_path / "run" / "last.pt")
    assert good.meta["position"]["global_step"] == 4
    assert all(torch.isfinite(value).all() for value in good.state.values() if value.is_floating_point())


def test_on_nan_skip_drops_the_bad_steps_and_finishes(tmp_path: Path, monkeypatch) -> None:
    result = run_with_nans(tmp_path, monkeypatch, {3, 7}, "skip")
    assert result.finished
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    skipped = [record["global_step"] for record in records if record["event"] == "skipped_step"]
    assert skipped == [2, 6]  # the positions before the skipped steps ran
    final = load_checkpoint(result.last)
    assert all(torch.isfinite(value).all() for value in final.state.values() if value.is_floating_point())


def test_on_nan_skip_gives_up_when_every_step_diverges(tmp_path: Path, monkeypatch) -> None:
    from lbgat.train.errors import TrainingDiverged

    with pytest.raises(TrainingDiverged, match="10 non-finite steps in a row"):
        run_with_nans(tmp_path, monkeypatch, set(range(3, 100)), "skip")


def digest(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


@pytest.mark.parametrize(("override", "message"), [
    (["--set", "attack.eps=-0.1"], "attack.eps must be in [0, 1]"),
    (["--set", "attack.eps=1.5"], "attack.eps must be in [0, 1]"),
    (["--set", "attack.steps=0"], "attack.steps must be >= 1"),
    (["--set", "attack.step_size=0"], "attack.step_size must be > 0"),
    (["--set", "optim.lr=0"], "optim.lr must be > 0"),
    (["--batch-size", "0"], "batch_size must be >= 1"),
    (["--set", "optim.lrr=0.1"], "unknown setting 'optim.lrr'"),
    (["--set", "on_nan=ignore"], "on_nan must be stop or skip"),
    (["--set", "checkpoint_every=-1"], "checkpoint_every must be >= 0"),
    # Resuming with another architecture or dataset is refused before anything is built or written.
    (["--model", "small-cnn"], "--resume with settings that differ from the run: model ('tiny-cnn' in the run"),
    (["--dataset", "cifar10", "--data-root", "/nowhere"], "data root /nowhere does not exist"),
])
def test_bad_settings_fail_in_one_line_and_leave_the_run_intact(straight_run: Path, capsys,
                                                                override: list[str], message: str) -> None:
    before = digest(straight_run)
    assert main([*RUN, "--out", str(straight_run), "--resume", *override]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error
    assert digest(straight_run) == before


@pytest.mark.parametrize(("flags", "message"), [
    (["--model", "small-cnn"], "holds a tiny-cnn, not a small-cnn"),
    (["--dataset", "cifar10", "--data-root", "/nowhere"], "cifar10"),
])
def test_evaluating_a_checkpoint_against_the_wrong_model_or_data_is_one_line(straight_run: Path, tmp_path: Path,
                                                                             capsys, flags, message) -> None:
    assert main(["eval", str(straight_run / "last.pt"), *flags, "--out", str(tmp_path / "eval"),
                 "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error
    assert not (tmp_path / "eval").exists()


def test_an_unwritable_run_directory_is_reported_before_any_data_is_read(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["train", "--method", "natural", "--model", "tiny-cnn", "--out", str(blocker / "run"),
                 "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert "cannot write to the run directory" in error and "is not a directory" in error


def test_a_disk_without_room_for_a_checkpoint_is_reported_before_training(tmp_path: Path, monkeypatch,
                                                                          capsys) -> None:
    import shutil

    from lbgat.train import preflight

    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    out = tmp_path / "run"
    assert main(["train", "--method", "natural", "--model", "tiny-cnn", "--out", str(out), "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert "not enough disk space for a checkpoint" in error and "MiB are free" in error
    assert not (out / "metrics.jsonl").exists()
