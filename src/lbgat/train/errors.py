"""How a training run ends early: diverged, stopped by a signal, or unable to write a checkpoint."""

from __future__ import annotations

from pathlib import Path

from ..errors import LbgatError
from .run_dir import LAST, PREVIOUS


class TrainingDiverged(LbgatError):
    """The loss became NaN or infinite."""


class TrainingStopped(LbgatError):
    """A stop signal arrived; the run saved a checkpoint after the current step and can be resumed."""

    label = "stopped"

    def __init__(self, message: str, signal_number: int, *, announce: bool = True) -> None:
        super().__init__(message)
        self.exit_code = 128 + signal_number  # 143 for SIGTERM, 130 for SIGINT, as a shell reports them
        self.announce = announce  # False on the other processes of a torchrun job: rank 0 says it once


class CheckpointWriteError(LbgatError):
    """A checkpoint could not be written (full disk, quota, ...); the ones written before are intact."""

    def __init__(self, path: Path, error: OSError, run_dir: Path) -> None:
        intact = next((run_dir / name for name in (LAST, PREVIOUS) if (run_dir / name).exists()), None)
        recovery = (f"the previous checkpoint {intact} is intact: free some space, then continue with "
                    f"--resume --out {run_dir}" if intact is not None else "no checkpoint of this run was written")
        super().__init__(f"could not write the checkpoint {path}: {error.strerror or error}; {recovery}")
