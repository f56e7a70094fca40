"""The real command line in a fresh process, how far a run in one has saved, and the comparison of two
runs' training states."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from lbgat.checkpoints.checkpoint import load_checkpoint
from lbgat.errors import CheckpointError


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m lbgat ...`` in a fresh process, as a user would run it."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "lbgat", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def assert_same_training_state(first: Path, second: Path) -> None:
    a, b = load_checkpoint(first), load_checkpoint(second)
    assert a.state.keys() == b.state.keys()
    for key in a.state:
        assert torch.equal(a.state[key], b.state[key]), key
    momentum_a = [state["momentum_buffer"] for state in a.optimizer["state"].values()]
    momentum_b = [state["momentum_buffer"] for state in b.optimizer["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(momentum_a, momentum_b, strict=True))
    assert a.meta["position"] == b.meta["position"]


def steps_saved(path: Path) -> int:
    try:
        return load_checkpoint(path).meta["position"]["global_step"]
    except CheckpointError:  # not there yet, or being replaced
        return 0
