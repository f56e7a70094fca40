"""The benchmarks still run and still check equality (tiny sizes; no timing is asserted)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from helpers.benchmark_modules import load
from helpers.data_fixtures import write_cifar10


@pytest.fixture(autouse=True)
def process_settings_restored() -> Iterator[None]:
    """A benchmark sets torch's thread count and cuDNN autotuning for its whole process, as it should;
    in the test process they must not leak into later tests (a thread count changes the order of
    floating-point sums, and the resume tests compare in-process runs with fresh processes bit for bit)."""
    threads, autotune = torch.get_num_threads(), torch.backends.cudnn.benchmark
    yield
    torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = autotune


def run_benchmark(name: str, arguments: list[str], capsys) -> str:
    """The benchmark's main() on ``arguments``: it must succeed; returns what it printed."""
    status = load(name).main(arguments)
    output = capsys.readouterr().out
    assert status == 0, output
    return output


def test_train_step_benchmark_agrees_with_the_reference(capsys, tmp_path: Path) -> None:
    output = run_benchmark("train_step", ["--model", "wrn-10-1", "--teacher", "wrn-10-1", "--batch-size", "4",
                                          "--repeats", "1", "--data-root", str(tmp_path / "absent")], capsys)
    assert "max relative loss difference 0.00e+00" in output
    assert "whole-step speed-up" in output


# A stand-in for the official MART repository (its mart_loss's signature and one start draw; no attack): enough
# to run the official side of the comparison without the official code, which the tests never fetch.
STAND_IN_MART = """import torch
import torch.nn.functional as F


def mart_loss(model, x_natural, y, optimizer, step_size, epsilon, perturb_steps, beta, distance="l_inf"):
    x = x_natural + 0.001 * torch.randn(x_natural.shape)
    return F.cross_entropy(model(x), y)
"""


def test_train_step_benchmark_times_a_method_against_its_official_step(capsys, tmp_path: Path) -> None:
    """Each side's forwards, time and images/s, the ratio and the difference after one step from the same
    state (the stand-in takes another step: the differences are not 0)."""
    (tmp_path / "mart").mkdir()
    (tmp_path / "mart" / "mart.py").write_text(STAND_IN_MART)
    output = run_benchmark("train_step", ["--official-mart", str(tmp_path / "mart"), "--repeats", "1",
                                          "--setting", "seed1-batch8-plain"], capsys)
    row = next(line for line in output.splitlines() if line.startswith("| mart |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1:4] == ["wrn-10-1", "1 / 12", "1 / 2"]  # its one train-mode forward; MART's 10 + 2, 2 in train mode
    assert float(cells[8].rstrip("x")) > 0 and float(cells[10]) > 0 and float(cells[11]) > 0


def test_speed_features_benchmark_runs_each_feature_against_its_absence(capsys, tmp_path: Path) -> None:
    output = run_benchmark("speed_features", ["--model", "tiny-cnn", "--teacher", "tiny-cnn", "--batch-size", "4",
                                              "--repeats", "1", "--attack-steps", "1", "--features",
                                              "channels_last,bf16", "--data-root", str(tmp_path / "absent")], capsys)
    assert "| channels_last |" in output and "| bf16 |" in output
    assert "fp32 baseline" in output


@pytest.mark.slow  # 11 s: two gloo processes; torchrun training is tested in tests/train in the default run
def test_ddp_benchmark_compares_two_processes_with_one(capsys, tmp_path: Path) -> None:
    write_cifar10(tmp_path, per_batch=4)  # 20 random images
    output = run_benchmark("ddp", ["--method", "pgd-at", "--model", "tiny-cnn", "--teacher", "", "--batch-size", "8",
                                   "--steps", "2", "--attack-steps", "1", "--data-root", str(tmp_path)], capsys)
    assert "| 2 |" in output and "relative weight difference after 2 steps" in output


def test_scaling_benchmark_prints_its_three_tables(capsys, tmp_path: Path) -> None:
    output = run_benchmark("scaling", ["--batch-sizes", "2", "--steps-grid", "1", "--models", "tiny-cnn",
                                       "--batch-size", "2", "--attack-steps", "1", "--repeats", "1", "--data-root",
                                       str(tmp_path / "absent")], capsys)
    assert "| batch size |" in output and "| attack steps |" in output and "| tiny-cnn |" in output


def test_gpu_speed_benchmark_runs_its_variants_on_cpu(capsys, tmp_path: Path) -> None:
    output = run_benchmark("gpu_speed", ["--device", "cpu", "--model", "tiny-cnn", "--teacher", "tiny-cnn",
                                         "--batch-size", "2", "--attack-steps", "1", "--steps", "1", "--warmup", "1",
                                         "--threads", "1", "--variants", "fp32,default,tf32,bf16+cl,bf16+cl+fused",
                                         "--data-root", str(tmp_path / "absent")], capsys)
    assert all(f"| {name} |" in output for name in ("fp32", "default", "tf32", "bf16+cl", "bf16+cl+fused"))
    assert output.count("| n/a |") == 5  # no CUDA: host syncs not counted
    assert "| fp32 | " in output and "0.0e+00 |" in output  # fp32 against itself


def test_compile_attack_benchmark_counts_the_weight_gradients_of_the_compiled_attack(capsys, tmp_path: Path) -> None:
    """Through the compiled network every attack step computes the weight gradients."""
    output = run_benchmark("compile_attack", ["--model", "tiny-cnn", "--batch-size", "2", "--attack-steps", "2",
                                              "--repeats", "1", "--threads", "1", "--backend", "aot_eager",
                                              "--data-root", str(tmp_path / "absent")], capsys)
    # tiny-cnn has two convolutions: two weight gradients per attack step through the compiled network.
    assert "| through the compiled network | " in output and " | 4 |" in output
    assert "| through its eager forward | " in output and " | 0 |" in output
    assert "| through the compiled network, weights frozen (lbgat) | " in output


def test_gpu_correctness_benchmark_runs_on_cpu(capsys) -> None:
    """The device check script runs its checks on CPU too (tiny sizes; the fp16 rows must show
    the old attack's zero gradients and lbgat's none)."""
    output = run_benchmark("gpu_correctness", ["--device", "cpu", "--checks", "1,3", "--train-steps", "2",
                                               "--examples", "8", "--attack-steps", "1"], capsys)
    assert "| fp16 unscaled (old) |" in output and "| fp16 (lbgat) |" in output
    assert "n/a on CPU" in output
