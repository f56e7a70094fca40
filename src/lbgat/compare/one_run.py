"""One run of a comparison: train it into its folder, evaluate its ``last.pt``, and tell whether earlier work can be
reused. The comparison's own loop (:mod:`.engine`) and a cluster job (:mod:`.job`) both go through here, so a job
trains and evaluates a run exactly as ``lbgat compare`` on one machine does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..checkpoints.checkpoint import sha256_of
from ..config import TrainConfig
from ..errors import ConfigError
from ..evaluate import EvalRequest, evaluate_checkpoint
from ..storage.locks import LOCK_FILE
from ..train import train
from ..train.run_dir import LAST, PREVIOUS, RUN_FILES
from .entries import CompareEntry

EVAL_FOLDER = "eval-last"
CHANGED_SETTINGS = "--resume with settings that differ from the run:"  # the trainer's refusal


@dataclass(frozen=True)
class EvalSettings:
    """The one protocol every method is evaluated with (the fields of ``lbgat eval`` a comparison sets)."""

    attacks: str | None = "clean,pgd"  # pgd: the dataset's evaluation PGD (PGD-20 on CIFAR, PGD-40 on MNIST)
    n: int | None = None
    protocol: str | None = None
    eps: float | None = None
    step_size: float | None = None
    seed: int = 0
    batch_size: int = 200
    check_n: int = 100
    device: str = "auto"

    def request(self, checkpoint: Path, out: Path) -> EvalRequest:
        return EvalRequest(checkpoint=checkpoint, attacks=self.attacks, n=self.n, protocol=self.protocol,
                           eps=self.eps, step_size=self.step_size, seed=self.seed, batch_size=self.batch_size,
                           check_n=self.check_n, device=self.device, out=out)

    def asked(self) -> dict[str, Any]:
        """What an evaluation is reused for: the request without the device it ran on."""
        return {key: value for key, value in asdict(self).items() if key != "device"}


@dataclass(frozen=True)
class PlannedRun:
    """One training run of a comparison: a method (and seed), its folder under OUT and its checked settings."""

    entry: CompareEntry
    seed: int | None
    folder: str  # under OUT: trades-alpha6, or trades-alpha6/seed0 with --seeds
    config: TrainConfig

    @property
    def label(self) -> str:
        return self.entry.label if self.seed is None else f"{self.entry.label} seed {self.seed}"


@dataclass
class Outcome:
    entry: CompareEntry
    run_dir: Path
    last: Path
    training: str  # "trained", "resumed" or "reused"
    evaluation: str  # "evaluated" or "reused"
    report: dict[str, Any]  # the evaluation's report.json
    report_dir: Path
    train_seconds: float
    seed: int | None = None  # the --seeds seed of this run (None without --seeds)


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / LAST).exists() or (run_dir / PREVIOUS).exists()


def clear_unstarted_run(run_dir: Path, say: Callable[[str], None]) -> None:
    """A run this comparison started that stopped before its first checkpoint: its run files (and only
    those) are removed so that it starts again; anything else in the folder makes the trainer refuse."""
    removable = [run_dir / name for name in RUN_FILES if (run_dir / name).is_file()
                 and not (run_dir / name).is_symlink()]
    others = ([path for path in run_dir.iterdir() if path not in removable and path.name != LOCK_FILE]
              if run_dir.is_dir() else [])
    if others or not removable:
        return
    for path in removable:
        path.unlink()
    say(f"   {run_dir} stopped before its first checkpoint: starting it again")


def train_run(config: TrainConfig, run_dir: Path, progress: bool, say: Callable[[str], None]) -> tuple[Path, str]:
    """Train ``config`` into ``run_dir``: a new run, or the stopped one there resumed, or a finished one reused.
    Returns its last checkpoint and how ("trained", "resumed" or "reused")."""
    resume = has_checkpoint(run_dir)
    try:
        result = train(config, resume=resume, progress=progress)
    except ConfigError as error:
        if resume and str(error).startswith(CHANGED_SETTINGS):
            raise ConfigError(f"{run_dir} holds a run of this comparison trained with other settings "
                              f"({str(error)[len(CHANGED_SETTINGS):].strip()}); run the same command as before, or "
                              "choose another --out") from None
        raise
    if not resume:
        return result.last, "trained"
    if result.note and result.note.startswith("nothing to do"):
        say(f"   reused the run in {run_dir} ({result.note})")
        return result.last, "reused"
    say(f"   resumed the stopped run in {run_dir}")
    return result.last, "resumed"


def reusable_evaluation(earlier: dict[str, Any] | None, settings: EvalSettings, last: Path) -> dict[str, Any] | None:
    """The report of the evaluation ``earlier`` records (compare.json), if it was made with the same request of
    this very checkpoint and its report.json is unchanged; else None."""
    earlier = earlier or {}
    report_path = last.parent / EVAL_FOLDER / "report.json"
    if (earlier.get("request") == settings.asked() and report_path.is_file() and last.is_file()
            and earlier.get("checkpoint_sha256") == sha256_of(last)
            and sha256_of(report_path) == earlier.get("report_sha256")):
        return json.loads(report_path.read_text(encoding="utf-8"))
    return None


def evaluate_run(settings: EvalSettings, last: Path, earlier: dict[str, Any] | None, progress: bool,
                 say: Callable[[str], None]) -> tuple[dict[str, Any], Path, dict[str, Any] | None]:
    """Evaluate ``last`` into its run's eval-last, or reuse the evaluation ``earlier`` records. Returns the report,
    its folder and, for a new evaluation, the record to keep (None when reused). Under torchrun every process
    calls this; the others get an empty report."""
    out = last.parent / EVAL_FOLDER
    report = reusable_evaluation(earlier, settings, last)
    if report is not None:
        say(f"   reused its evaluation in {out}")
        return report, out, None
    say(f"   evaluating {last} into {out}")
    report, report_dir = evaluate_checkpoint(settings.request(last, out), progress=progress)
    return report, report_dir, evaluation_record(settings, last, report_dir) if report else None


def evaluation_record(settings: EvalSettings, last: Path, report_dir: Path) -> dict[str, Any]:
    """What compare.json keeps of an evaluation so that the next run of the command can reuse it."""
    return {"request": settings.asked(), "checkpoint_sha256": sha256_of(last),
            "report_sha256": sha256_of(report_dir / "report.json")}


def training_seconds(run_dir: Path, fallback: float) -> float:
    """Training time from metrics.jsonl (so a re-run that re-uses a finished run reports the real cost)."""
    total = 0.0
    try:
        lines = (run_dir / "metrics.jsonl").read_text(errors="replace").splitlines()
    except OSError:
        return fallback
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a killed run
            continue
        if isinstance(record, dict) and record.get("event") == "epoch":
            total += record.get("train_seconds") or 0.0
    return total or fallback
