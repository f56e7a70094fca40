"""The run directory: the names of the files a run writes, the checks before a run starts or resumes in
it, and the files a new run writes first."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..checkpoints.checkpoint import Checkpoint, check_checkpoint_path, load_checkpoint, require_resumable
from ..config import TrainConfig, config_to_yaml
from ..errors import CheckpointError, ConfigError, UnsafeCheckpointError
from ..runtime.arithmetic import describe_arithmetic
from ..runtime.provenance import code_version, environment
from ..storage.files import strict_json, write_text_atomic
from .setup import RunParts

LAST = "last.pt"
PREVIOUS = "last.prev.pt"  # the checkpoint before last.pt, kept for when last.pt is damaged
BEST = "best.pt"
# The files a new run writes besides its checkpoints.
RUN_FILES = ("config.yaml", "provenance.json", "split.json", "metrics.jsonl", BEST)


def check_run_dir(run_dir: Path, resume: bool) -> Checkpoint | None:
    last, previous = run_dir / LAST, run_dir / PREVIOUS
    if resume:
        if not last.exists() and not previous.exists():
            raise ConfigError(f"nothing to resume: {last} does not exist")
        return resumable_checkpoint(last, previous)
    if last.exists() or previous.exists():
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another --out")
    # A new run writes these; one found here is another run's (stopped before its first checkpoint) or
    # the user's own, and a new run must not overwrite it.
    present = [name for name in RUN_FILES if (run_dir / name).exists()] + sorted(
        path.name for path in run_dir.glob("epoch-*.pt"))
    if present:
        raise ConfigError(f"{run_dir} already holds {', '.join(present)} but no checkpoint to resume from; "
                          "choose another --out, or move those files away")
    return None


def resumable_checkpoint(last: Path, previous: Path) -> Checkpoint:
    """last.pt, or last.prev.pt (with a warning) when last.pt is missing, truncated or damaged.
    A file refused as unsafe is never skipped over: that is tampering, not damage. Nor is a folder or
    other non-file in last.pt's place: the run could not write its next checkpoint there."""
    if last.exists() and not last.is_file():
        check_checkpoint_path(last)  # raises, saying what is there instead
    try:
        return require_resumable(load_checkpoint(last))
    except UnsafeCheckpointError:
        raise
    except CheckpointError as error:
        if not previous.exists():
            raise
        damage = str(error)
    fallback = require_resumable(load_checkpoint(previous))
    position = fallback.meta.get("position", {})
    print(f"warning: {damage}; resuming from the previous checkpoint {previous} (epoch "
          f"{position.get('epoch', 0) + 1}, after step {position.get('global_step')})", file=sys.stderr)
    return fallback


def last_good_checkpoint(run_dir: Path, last_is_good: bool) -> str:
    """Where a diverged run can be taken up again: a checkpoint is written only after a finite loss, so
    the newest one on disk is good (last.pt not when it was found damaged). Named only if one exists."""
    for name in (LAST, PREVIOUS) if last_is_good else (PREVIOUS,):
        if (run_dir / name).is_file():
            return f"the last good checkpoint is {run_dir / name}"
    return "no checkpoint was written yet"


def write_run_files(run_dir: Path, config: TrainConfig, parts: RunParts, argv: list[str] | None) -> None:
    if not parts.world.is_main:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", config_to_yaml(config))
    provenance = {
        "code_version": code_version(), "environment": environment(), "argv": argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": str(parts.device),
        "processes": parts.world.size,
        "dataset_source": parts.dataset.source,
        "arithmetic": describe_arithmetic(config.precision, parts.device, float32=config.float32,
                                          deterministic=config.deterministic),
    }
    write_text_atomic(run_dir / "provenance.json", strict_json(provenance, indent=2) + "\n")
    split = {"split_seed": config.data.split_seed, "val_size": len(parts.val_indices),
             "train_size": len(parts.train_indices), "held_out_indices": parts.val_indices.tolist()}
    if config.data.train_size is not None:
        split["train_indices"] = parts.train_indices.tolist()
    write_text_atomic(run_dir / "split.json", strict_json(split) + "\n")
