"""``torchrun --nproc_per_node 2 -m lbgat train`` on CPU (gloo): the same model as one process, resumable,
rank 0 alone writing, clean teardown; and the pieces (probe for unused parameters, batch shares)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from helpers.data_fixtures import write_cifar10
from helpers.torchrun_runs import (
    quiet_environment,
    records,
    relative_differences,
    sigterm_after,
    steps_saved,
    torchrun,
    torchrun_command,
)
from lbgat.checkpoints.checkpoint import load_checkpoint
from lbgat.cli import main

# lbgat (student and jointly trained teacher, no BatchNorm) on the embedded digits: 620 examples in
# batches of 31, so every step splits unevenly (16 + 15) between the two processes; 20 steps = one epoch.
LBGAT_TINY = ["train", "--method", "lbgat", "--model", "tiny-cnn", "--teacher", "tiny-cnn", "--dataset", "mnist-5k",
              "--batch-size", "31", "--epochs", "1", "--no-progress", "--set", "data.train_size=620",
              "--set", "data.val_size=62", "--set", "attack.steps=3", "--set", "val.steps=2",
              "--set", "optim.lr=0.02", "--set", "log_every=5"]
# Relative difference allowed between 1- and 2-process weights after 20 steps. The two differ only in
# the order of floating-point sums (a mean over 31 against a weighted average of means over 16 and 15);
# measured: about 1e-7 at this learning rate (docs/performance.md on why large ones amplify it).
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp")
    single, double, halves = root / "single", root / "double", root / "halves"
    assert main([*LBGAT_TINY, "--out", str(single)]) == 0
    launched = torchrun(*LBGAT_TINY, "--out", str(double))
    assert launched.returncode == 0, launched.stderr[-3000:]
    first = torchrun(*LBGAT_TINY, "--out", str(halves), "--max-steps", "9")
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = torchrun(*LBGAT_TINY, "--out", str(halves), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {"single": single, "double": double, "halves": halves, "stdout": launched.stdout,
            "stderr": launched.stderr}


def test_two_processes_train_the_model_one_process_trains(runs) -> None:
    differences = relative_differences(runs["single"] / "last.pt", runs["double"] / "last.pt")
    assert {key.split(".")[0] for key in differences} == {"student", "teacher"}
    worst = max(differences, key=differences.get)
    assert differences[worst] <= TOLERANCE, (worst, differences[worst])
    one, two = (next(r for r in records(runs[name]) if r["event"] == "epoch") for name in ("single", "double"))
    for term, value in one["train"].items():  # the logged means are over the global batch, not rank 0's share
        assert two["train"][term] == pytest.approx(value, rel=1e-4), term
    assert two["val"]["n"] == one["val"]["n"] == 62  # validation sharded, counts summed over ranks
    assert abs(two["val"]["robust_acc"] - one["val"]["robust_acc"]) <= 1 / 62


def test_rank_zero_alone_reports_and_writes(runs) -> None:
    assert runs["stdout"].count("training finished") == 1
    assert [r["event"] for r in records(runs["double"])] == ["started", "epoch"]
    assert sorted(path.name for path in runs["double"].iterdir()) == [
        "best.pt", "config.yaml", "last.pt", "metrics.jsonl", "provenance.json", "split.json"]
    assert json.loads((runs["double"] / "provenance.json").read_text())["processes"] == 2
    assert load_checkpoint(runs["double"] / "last.pt").meta["processes"] == 2
    # Torn down cleanly: no complaint about a process group left behind, no rank failure.
    assert "destroy_process_group" not in runs["stderr"]
    assert "ChildFailedError" not in runs["stderr"]


def test_a_two_process_run_resumes_exactly(runs) -> None:
    events = [r["event"] for r in records(runs["halves"])]
    assert events == ["started", "stopped", "resumed", "epoch"]
    differences = relative_differences(runs["double"] / "last.pt", runs["halves"] / "last.pt")
    assert max(differences.values()) == 0.0


def test_sigterm_to_torchrun_stops_every_rank_after_the_same_step_and_resumes_exactly(tmp_path: Path) -> None:
    """torchrun forwards SIGTERM to its workers; they agree on the step to stop after, rank 0 saves and
    says so once, and the resumed job ends where an uninterrupted one does."""
    longer = [*LBGAT_TINY, "--epochs", "3", "--checkpoint-every", "1"]
    straight = tmp_path / "straight"
    assert torchrun(*longer, "--out", str(straight)).returncode == 0
    out = tmp_path / "signalled"
    stderr = sigterm_after(longer, out, steps=5)
    stopped = [r for r in records(out) if r["event"] == "stopped"]
    assert len(stopped) == 1 and stopped[0]["reason"] == "SIGTERM" and stopped[0]["global_step"] < 60
    assert stderr.count("lbgat train: stopped: SIGTERM received") == 1
    assert steps_saved(out / "last.pt") == stopped[0]["global_step"]

    resumed = torchrun(*longer, "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert max(relative_differences(straight / "last.pt", out / "last.pt").values()) == 0.0


# A WRN-10-1 that keeps the official layout's dead sub_block1 (the registered wrn-10-1 leaves it out).
WITH_SUB_BLOCK = """
import sys
from lbgat.cli import main
from lbgat.errors import CheckpointError
from lbgat.models.registry import register_model
from lbgat.models.wideresnet import WideResNet

@register_model("wrn-10-1-sub-block", description="test only")
def build(num_classes, in_channels, image_size):
    return WideResNet(10, 1, num_classes, in_channels, sub_block1=True)

sys.exit(main(sys.argv[1:]))
"""


def test_batchnorm_model_with_an_unused_block_and_a_frozen_teacher_train_under_ddp(tmp_path: Path) -> None:
    """A WRN builds a sub_block1 it never runs; DDP would wait for its gradients forever unless it is
    frozen. BGAT's frozen teacher takes no part in the reduction and stays as loaded."""
    write_cifar10(tmp_path / "data", per_batch=8)  # 40 random 3x32x32 images
    data = ["--dataset", "cifar10", "--data-root", str(tmp_path / "data"), "--batch-size", "16", "--no-progress",
            "--set", "data.val_size=0"]
    natural = tmp_path / "natural"
    assert main(["train", "--method", "natural", "--model", "tiny-cnn", "--max-steps", "2", *data,
                 "--out", str(natural)]) == 0
    script = tmp_path / "train_with_sub_block.py"
    script.write_text(WITH_SUB_BLOCK)
    run = tmp_path / "bgat"
    launched = subprocess.run(
        torchrun_command(str(script), "train", "--method", "bgat", "--model", "wrn-10-1-sub-block", *data,
                         "--max-steps", "3", "--teacher-checkpoint", str(natural / "last.pt"),
                         "--set", "attack.steps=2", "--out", str(run)),
        capture_output=True, text=True, env=quiet_environment(), timeout=600)
    assert launched.returncode == 0, launched.stderr[-3000:]
    state = load_checkpoint(run / "last.pt").state
    teacher = {key.removeprefix("teacher.members.0."): value for key, value in state.items()
               if key.startswith("teacher.members.0.")}
    source = {key.removeprefix("student."): value for key, value in load_checkpoint(natural / "last.pt").state.items()
              if key.startswith("student.")}
    assert teacher.keys() == source.keys() and all(torch.equal(teacher[key], source[key]) for key in source)

    from lbgat.models.wideresnet import WideResNet
    torch.manual_seed(1)  # the run's seed: sub_block1 must still hold its initial weights
    fresh = WideResNet(10, 1, 10, 3, sub_block1=True).state_dict()
    unused = [key for key in fresh if key.startswith("sub_block1.") and key.endswith(("weight", "bias"))]
    assert unused and all(torch.equal(state[f"student.{key}"], fresh[key]) for key in unused)
    trained = [key for key in fresh if key.startswith("block1.") and key.endswith("conv1.weight")]
    assert trained and not any(torch.equal(state[f"student.{key}"], fresh[key]) for key in trained)


def test_the_probe_finds_exactly_the_parameters_no_loss_reaches() -> None:
    from lbgat.data.loader import Batch
    from lbgat.methods import TrainAttack, create_method
    from lbgat.models.wideresnet import WideResNet
    from lbgat.train.parallel import unused_parameters

    student = WideResNet(10, 1, 10, 3, sub_block1=True)
    method = create_method("pgd-at", student, params={}, attack=TrainAttack(0.03, 0.01, 1, "uniform"))
    batch = Batch(torch.rand(2, 3, 32, 32), torch.tensor([1, 2]), torch.tensor([0, 1]), epoch=0, seed=0)
    before = {key: value.clone() for key, value in method.state_dict().items()}
    names = unused_parameters(method, batch)
    assert names and all(name.startswith("student.sub_block1.") for name in names)
    assert {name for name, _ in student.sub_block1.named_parameters(prefix="student.sub_block1")} == set(names)
    # The probe runs on a copy: weights, BN statistics and gradients of the method are untouched.
    assert all(torch.equal(before[key], value) for key, value in method.state_dict().items())
    assert all(parameter.grad is None for parameter in method.parameters())


def test_uneven_shares_are_weighted_to_the_global_mean() -> None:
    from lbgat.data.loader import Batch
    from lbgat.runtime.world import World
    from lbgat.train.parallel import share_weight

    world = World(0, 2)
    big = Batch(torch.zeros(16, 1), torch.zeros(16), torch.arange(16), 0, 0, global_size=31)
    small = Batch(torch.zeros(15, 1), torch.zeros(15), torch.arange(15), 0, 0, global_size=31)
    losses = torch.rand(31, dtype=torch.float64)
    # DDP averages the ranks' gradients: (w16 * mean16 + w15 * mean15) / 2 must be the mean over 31.
    averaged = (share_weight(big, world) * losses[:16].mean() + share_weight(small, world) * losses[16:].mean()) / 2
    assert float(averaged) == pytest.approx(float(losses.mean()), rel=1e-12)


def test_too_small_a_last_batch_for_the_processes_is_one_line(tmp_path: Path) -> None:
    launched = torchrun("train", "--method", "natural", "--model", "tiny-cnn", "--dataset", "mnist-5k",
                        "--batch-size", "16", "--no-progress", "--set", "data.train_size=33",
                        "--set", "data.val_size=0", "--out", str(tmp_path / "run"), processes=3)
    assert launched.returncode != 0
    assert "lbgat train: error: with 3 processes every batch needs at least 3 examples" in launched.stderr


def test_sync_bn_on_cpu_is_one_line(tmp_path: Path, capsys) -> None:
    code = main(["train", "--method", "natural", "--model", "tiny-cnn", "--dataset", "mnist-5k", "--device", "cpu",
                 "--sync-bn", "--out", str(tmp_path / "run"), "--no-progress"])
    assert code != 0
    assert "sync_bn needs GPUs" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_every_train_flag_passes_through_torchrun_unabbreviated() -> None:
    """torchrun's parser sees the script's arguments too and expands abbreviations of its own flags."""
    from torch.distributed.run import get_args_parser

    from lbgat.cli import build_parser

    torchrun_flags = [flag for action in get_args_parser()._actions for flag in action.option_strings]
    commands = next(action for action in build_parser()._actions if hasattr(action, "choices") and action.choices)
    train_flags = [flag for action in commands.choices["train"]._actions for flag in action.option_strings]
    clashing = {flag for flag in train_flags if any(theirs.startswith(flag) for theirs in torchrun_flags)}
    assert clashing == {"-h", "--help"}


# Runs `lbgat train` under torchrun and records when each rank exits; rank 0's stop checkpoint is made
# slow (a slow disk), so a rank that does not wait for it exits first. Test-only: it patches the
# trainer inside the worker processes, the product has no such hook.
SLOW_STOP_SAVE = """
import os, sys, time
from pathlib import Path
from lbgat.cli import main
from lbgat.train import trainer

times = Path(os.environ["LBGAT_TEST_TIMES"])
rank = os.environ["RANK"]
(times / f"pid-{rank}").write_text(str(os.getpid()))
agreed, save_last = trainer.Trainer._stop_agreed, trainer.Trainer._save_last

def remember_stop(self, *args, **kwargs):
    self.stop_for = agreed(self, *args, **kwargs)
    return self.stop_for

def slow_save_last(self):
    stopping = self.world.is_main and getattr(self, "stop_for", None)
    if stopping:
        time.sleep(3)
    save_last(self)
    if stopping:
        (times / "saved").write_text(repr(time.time()))

trainer.Trainer._stop_agreed, trainer.Trainer._save_last = remember_stop, slow_save_last
status = main(sys.argv[1:])
(times / f"exit-{rank}").write_text(repr(time.time()))
sys.exit(status)
"""


def test_no_rank_exits_on_a_stop_before_rank_zero_saved(tmp_path: Path) -> None:
    """A stop signal reaching every worker (as a scheduler sends it) must not let
    rank 1 exit while rank 0 still writes last.pt: torchrun stops the whole job once one worker exits
    non-zero and kills the rest 30 s later. Every rank meets rank 0 after its save, then exits."""
    script, times, out = tmp_path / "slow_stop_save.py", tmp_path / "times", tmp_path / "run"
    script.write_text(SLOW_STOP_SAVE)
    times.mkdir()
    longer = [*LBGAT_TINY, "--epochs", "3", "--checkpoint-every", "1"]
    process = subprocess.Popen(
        torchrun_command(str(script), *longer, "--out", str(out)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**quiet_environment(), "LBGAT_TEST_TIMES": str(times)})
    deadline = time.monotonic() + 300
    while steps_saved(out / "last.pt") < 3:
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    for rank in (0, 1):
        os.kill(int((times / f"pid-{rank}").read_text()), signal.SIGTERM)
    process.communicate(timeout=300)
    assert process.returncode != 0
    saved = float((times / "saved").read_text())
    assert float((times / "exit-1").read_text()) > saved, "rank 1 exited before rank 0's checkpoint was written"
    # (Once rank 1 has exited, torchrun sends rank 0 a SIGTERM too; by then its checkpoint is complete.)
    stopped = [r for r in records(out) if r["event"] == "stopped"]
    assert len(stopped) == 1 and stopped[0]["reason"] == "SIGTERM"
    assert steps_saved(out / "last.pt") == stopped[0]["global_step"]
