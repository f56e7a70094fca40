"""The benchmarks still run and still check equality (tiny sizes; no timing is asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_step_benchmark_agrees_with_the_reference(capsys, tmp_path: Path) -> None:
    benchmark = load("train_step")
    status = benchmark.main(["--model", "wrn-10-1", "--teacher", "wrn-10-1", "--batch-size", "4", "--repeats", "1",
                             "--data-root", str(tmp_path / "absent")])
    output = capsys.readouterr().out
    assert status == 0, output
    assert "max relative loss difference 0.00e+00" in output
    assert "whole-step speed-up" in output
