"""Weight averaging resumes exactly: a real ``lbgat train`` process with an EMA or an SWA, killed (SIGKILL) after
averaging started, resumes to the same raw and averaged weights, bit for bit, as an uninterrupted run, with the
same held-out accuracies of both and the same best.pt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.cli_runs import assert_same_training_state, steps_saved
from helpers.data_fixtures import cifar10_mini_root
from lbgat.checkpoints.checkpoint import load_checkpoint
from lbgat.cli import main

# wrn-10-1 (BatchNorm) on cifar10-mini: 2 epochs of 3 steps, averaging in the second, a checkpoint after every step.
RUN = ["train", "--method", "pgd-at", "--model", "wrn-10-1", "--dataset", "cifar10", "--data-root",
       str(cifar10_mini_root()), "--batch-size", "16", "--epochs", "2", "--no-progress", "--checkpoint-every", "1",
       "--set", "data.val_size=8", "--set", "data.train_size=48", "--set", "attack.steps=1", "--set", "val.steps=1",
       "--set", "average.start=1"]
KINDS = {"ema": ["--average", "ema"],  # Wang et al.: warm-up of the decay, statistics copied
         "swa": ["--average", "swa"]}  # DA-Alone: equal weights, statistics recomputed at each epoch end
TOTAL_STEPS = 6
KILL_AFTER = 4  # in the second epoch, after averaging started


def epochs_logged(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{key: value for key, value in record.items() if key != "train_seconds"}
            for record in records if record["event"] == "epoch"]


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("straight")
    for kind, flags in KINDS.items():
        assert main([*RUN, *flags, "--out", str(root / kind)]) == 0
    return {kind: root / kind for kind in KINDS}


def assert_same_run(resumed: Path, straight: Path) -> None:
    # Raw and averaged weights (average.*), BatchNorm statistics, optimiser state, position: bitwise.
    assert_same_training_state(resumed / "last.pt", straight / "last.pt")
    assert load_checkpoint(resumed / "last.pt").meta["average"] == load_checkpoint(straight / "last.pt").meta["average"]
    best = [load_checkpoint(run / "best.pt") for run in (resumed, straight)]
    assert best[0].meta["best"] == best[1].meta["best"]
    assert best[0].state.keys() == best[1].state.keys()
    assert all(best[0].state[key].equal(best[1].state[key]) for key in best[1].state)
    logged = epochs_logged(straight)
    assert epochs_logged(resumed) == logged  # held-out accuracies of raw and averaged weights
    kind = load_checkpoint(straight / "last.pt").meta["average"]["kind"]
    assert logged[0][f"val_{kind}"] is None and logged[1][f"val_{kind}"] is not None  # validated once started


@pytest.mark.parametrize("kind", [
    "ema",
    # The same path as ema's (one checkpoint holds every average); in the default run swa resumes in-process below.
    pytest.param("swa", marks=pytest.mark.slow),
])
def test_a_killed_run_resumes_its_average_bit_for_bit(kind: str, straight_runs: dict[str, Path],
                                                      tmp_path: Path) -> None:
    out = tmp_path / kind
    process = subprocess.Popen([sys.executable, "-m", "lbgat", *RUN, *KINDS[kind], "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONWARNINGS="ignore"))
    deadline = time.monotonic() + 300
    while steps_saved(out / "last.pt") < KILL_AFTER:
        assert process.poll() is None, f"finished before step {KILL_AFTER}: {process.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    killed = load_checkpoint(out / "last.pt")
    assert KILL_AFTER <= killed.meta["position"]["global_step"] < TOTAL_STEPS
    assert killed.meta["average"]["kind"] == kind and killed.meta["average"]["updates"] > 0

    assert main([*RUN, *KINDS[kind], "--out", str(out), "--resume"]) == 0
    assert_same_run(out, straight_runs[kind])


def test_swa_stopped_mid_epoch_resumes_bit_for_bit(straight_runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "swa"
    assert main([*RUN, *KINDS["swa"], "--out", str(out), "--max-steps", "5"]) == 0
    assert load_checkpoint(out / "last.pt").meta["average"] == {"kind": "swa", "updates": 2}
    assert main([*RUN, *KINDS["swa"], "--out", str(out), "--resume"]) == 0
    assert_same_run(out, straight_runs["swa"])
