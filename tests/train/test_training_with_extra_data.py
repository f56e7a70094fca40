"""Training with extra data (data.extra): any method and plug-in trains on the mixed batches, a killed run
resumes bit-for-bit, the run is tied to the extra data's content, and a large .npz is never held in memory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.cli_runs import assert_same_training_state, steps_saved
from helpers.data_fixtures import write_carmon_pickle, write_cifar10, write_extra_npz
from lbgat.checkpoints.checkpoint import load_checkpoint
from lbgat.cli import main
from lbgat.data.extra import load_extra


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Generated CIFAR-10 (320 training images), a generated-image .npz and a pseudo-labelled pickle."""
    root = tmp_path_factory.mktemp("extra")
    write_cifar10(root / "cifar", per_batch=64)
    write_extra_npz(root / "generated.npz", 500)
    write_carmon_pickle(root / "ti_pseudo_labeled.pickle", 300)
    return root


def train_args(cifar: Path, out: Path, extra: Path | None, *more: str) -> list[str]:
    with_extra = ["--set", f"data.extra={extra}"] if extra is not None else []
    return ["train", "--model", "tiny-cnn", "--dataset", "cifar10", "--data-root", str(cifar), "--batch-size", "32",
            "--no-progress", "--out", str(out), "--set", "data.val_size=0", *with_extra, *more]


@pytest.mark.parametrize(("extra", "method"), [
    ("generated.npz", ["--method", "trades", "--plugin", "rpat"]),
    ("ti_pseudo_labeled.pickle", ["--method", "lbgat-trades", "--teacher", "tiny-cnn"])])
def test_methods_and_plugins_train_with_extra_data(data: Path, tmp_path: Path, extra: str, method: list[str]) -> None:
    out = tmp_path / "run"
    assert main(train_args(data / "cifar", out, data / extra, *method, "--max-steps", "2", "--set", "attack.steps=2",
                           "--set", "data.extra_fraction=0.7")) == 0
    meta = load_checkpoint(out / "last.pt").meta
    recorded = meta["dataset"]["extra"]
    assert recorded["fingerprint"] == load_extra(data / extra).fingerprint
    assert recorded["images"] == len(load_extra(data / extra)) and recorded["path"] == str((data / extra).resolve())
    assert meta["config"]["data"]["extra_fraction"] == 0.7
    started = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert started["config"]["data"]["extra"] == str(data / extra)


# pgd-at with random crops, flips and attack starts, so an exact resume needs every draw back.
KILLED = ["--method", "pgd-at", "--epochs", "2", "--set", "attack.steps=10", "--checkpoint-every", "3"]
TOTAL_STEPS = 20  # 320 images in batches of 32: 10 steps an epoch, as without extra data


def test_sigkill_then_resume_with_extra_data_is_bit_identical(data: Path, tmp_path: Path, capsys) -> None:
    straight = tmp_path / "straight"
    assert main(train_args(data / "cifar", straight, data / "generated.npz", *KILLED)) == 0
    assert load_checkpoint(straight / "last.pt").meta["position"]["global_step"] == TOTAL_STEPS

    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "lbgat", *train_args(data / "cifar", out,
                                                                           data / "generated.npz", *KILLED)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONWARNINGS="ignore"))
    deadline = time.monotonic() + 300
    while steps_saved(out / "last.pt") < 5:  # mid-epoch
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert steps_saved(out / "last.pt") < TOTAL_STEPS

    # The extra data moved: it is identified by its content, so the run resumes from its new path.
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copytree(data / "cifar", moved / "cifar")
    shutil.copy(data / "generated.npz", moved / "generated.npz")
    assert main([*train_args(moved / "cifar", out, moved / "generated.npz", *KILLED), "--resume"]) == 0, \
        capsys.readouterr().err
    assert_same_training_state(out / "last.pt", straight / "last.pt")


def test_resume_with_other_or_without_extra_data_is_refused_in_one_line(data: Path, tmp_path: Path,
                                                                         capsys) -> None:
    out = tmp_path / "run"
    natural = ["--method", "natural", "--max-steps", "2"]
    assert main(train_args(data / "cifar", out, data / "generated.npz", *natural[:-1], "1")) == 0
    other = write_extra_npz(tmp_path / "other.npz", 500, seed=9)
    capsys.readouterr()
    assert main([*train_args(data / "cifar", out, other, *natural), "--resume"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "different extra data" in error and str(other) in error
    assert main([*train_args(data / "cifar", out, None, *natural), "--resume"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "without the run's extra data" in error
    assert steps_saved(out / "last.pt") == 1


def test_extra_fraction_needs_extra_data(tmp_path: Path, capsys) -> None:
    assert main(["train", "--model", "tiny-cnn", "--out", str(tmp_path / "run"), "--no-progress",
                 "--set", "data.extra_fraction=0.5"]) == 2
    assert "data.extra_fraction is the share of each batch drawn from data.extra" in capsys.readouterr().err
    assert main(["train", "--model", "tiny-cnn", "--out", str(tmp_path / "run"), "--no-progress",
                 "--set", "data.extra=x.npz", "--set", "data.extra_fraction=1.0"]) == 2
    assert "data.extra_fraction must be in [0, 1), got 1.0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# A fresh process trains a few steps on generated CIFAR-10 without, then with, the large .npz, and reports its
# peak resident memory after each: the second peak less the first is what the extra data cost.
PEAK_MEMORY = """
import json, sys
from lbgat.cli import main

def peak():
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))

root, extra = sys.argv[1], sys.argv[2]
run = ["train", "--method", "natural", "--model", "tiny-cnn", "--dataset", "cifar10", "--data-root",
       root + "/cifar", "--batch-size", "128", "--max-steps", "4", "--no-progress", "--set", "data.val_size=0"]
assert main([*run, "--out", root + "/plain"]) == 0
without = peak()
assert main([*run, "--out", root + "/extra", "--set", "data.extra=" + extra, "--set", "data.extra_fraction=0.7"]) == 0
print(json.dumps({"without": without, "with": peak()}))
"""


def peak_memory_with_extra(tmp_path: Path, images: int) -> tuple[int, int, int]:
    """(file size, peak RSS without, peak RSS with the extra data) in bytes, after writing ``images`` random
    images to a .npz in chunks."""
    if not Path("/proc/self/status").exists():
        pytest.skip("reads the peak resident memory from /proc (Linux)")
    needed = images * 3072 + (1 << 28)
    if shutil.disk_usage(tmp_path).free < needed:
        pytest.skip(f"needs {needed / 2**30:.1f} GiB free in {tmp_path}")
    write_cifar10(tmp_path / "cifar", per_batch=200)
    big = write_extra_npz(tmp_path / "big.npz", images)
    try:
        done = subprocess.run([sys.executable, "-c", PEAK_MEMORY, str(tmp_path), str(big)], capture_output=True,
                              text=True, timeout=600, env=dict(os.environ, PYTHONWARNINGS="ignore"))
        size = big.stat().st_size
    finally:
        big.unlink()  # pytest keeps its last temporary folders: 3 GB is not left behind
    assert done.returncode == 0, done.stderr
    peaks = json.loads(done.stdout.strip().splitlines()[-1])
    return size, peaks["without"], peaks["with"]


def test_a_100k_image_npz_trains_without_being_held_in_memory(tmp_path: Path) -> None:
    size, without, with_extra = peak_memory_with_extra(tmp_path, 100_000)
    assert size > 300e6
    assert with_extra - without < size / 8, (size, without, with_extra)


@pytest.mark.slow
def test_a_1m_image_npz_trains_without_being_held_in_memory(tmp_path: Path) -> None:
    """3 GB of random images (as Wang et al.'s 1m.npz is sized); measured: docs/training.md."""
    size, without, with_extra = peak_memory_with_extra(tmp_path, 1_000_000)
    print(f"npz {size / 2**30:.2f} GiB; peak RSS {without / 2**20:.0f} MiB without, {with_extra / 2**20:.0f} MiB "
          "with the extra data")
    assert size > 3e9
    assert with_extra < size / 4 and with_extra - without < size / 30, (size, without, with_extra)


@pytest.mark.slow
def test_two_processes_share_the_mixed_batches(data: Path, tmp_path: Path) -> None:
    """torchrun on CPU (gloo): each process gathers its share of every mixed batch (31 = 16 + 15), and the
    two train the model one process trains, up to the order of floating-point sums (as without extra data)."""
    args = train_args(data / "cifar", tmp_path / "single", data / "generated.npz", "--method", "pgd-at",
                      "--epochs", "1", "--set", "attack.steps=2", "--set", "optim.lr=0.02")
    args[args.index("--batch-size") + 1] = "31"
    assert main(args) == 0
    args[args.index("--out") + 1] = str(tmp_path / "double")
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "-m", "lbgat", *args], capture_output=True, text=True, timeout=600,
                              env=dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1"))
    assert launched.returncode == 0, launched.stderr[-3000:]
    one, two = (load_checkpoint(tmp_path / run / "last.pt") for run in ("single", "double"))
    assert one.meta["position"] == two.meta["position"] == {"epoch": 1, "batch": 0, "global_step": 11}
    for key, value in one.state.items():
        if value.is_floating_point() and not key.startswith("rng."):
            assert float((value - two.state[key]).norm() / value.norm().clamp_min(1e-12)) < 1e-5, key
