"""`lbgat` under ``torchrun`` on CPU (gloo) in fresh processes, and what the runs left: their checkpoints compared,
their steps saved, their metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers.cli_runs import steps_saved
from lbgat.checkpoints.checkpoint import load_checkpoint


def quiet_environment() -> dict[str, str]:
    return dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")


def torchrun_command(*arguments: str, processes: int = 2) -> list[str]:
    """``torchrun --nproc_per_node N -m lbgat ARGUMENTS``; a script path first in ``arguments`` runs that instead."""
    target = [] if arguments and arguments[0].endswith(".py") else ["-m", "lbgat"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            *target, *arguments]


def torchrun(*arguments: str, processes: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_command(*arguments, processes=processes), capture_output=True, text=True,
                          env=quiet_environment(), timeout=600)


def relative_differences(left: Path, right: Path) -> dict[str, float]:
    """Per floating-point tensor of two checkpoints: ||left - right|| / ||left||."""
    one, two = load_checkpoint(left).state, load_checkpoint(right).state
    assert one.keys() == two.keys()
    return {key: float((one[key] - two[key]).norm() / one[key].norm().clamp_min(1e-12))
            for key in one if one[key].is_floating_point() and not key.startswith("rng.")}


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def sigterm_after(arguments: list[str], out: Path, steps: int) -> str:
    """Start ``torchrun ... lbgat ARGUMENTS --out OUT``, send torchrun SIGTERM once ``last.pt`` holds ``steps``
    steps (the run must checkpoint every step), and return its stderr once it has stopped (non-zero)."""
    process = subprocess.Popen(torchrun_command(*arguments, "--out", str(out)), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=quiet_environment())
    deadline = time.monotonic() + 300
    while steps_saved(out / "last.pt") < steps:
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode != 0
    return stderr
