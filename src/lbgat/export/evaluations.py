"""The evaluations of a checkpoint found next to it, for the model card.

``lbgat eval CKPT`` writes ``report.json`` into ``eval-<name>`` beside the checkpoint (or into its
``--out``) and records the sha256 of the file it evaluated. A report counts as an evaluation of the
checkpoint being exported only when that hash matches: a report of an earlier ``last.pt`` (the run
went on since) describes other weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..evaluate.runner import default_out

REPORT = "report.json"


@dataclass(frozen=True)
class Evaluation:
    folder: Path
    report: dict[str, Any]


@dataclass
class FoundEvaluations:
    matching: list[Evaluation] = field(default_factory=list)
    # Reports in eval-<name> that evaluated other contents of a file of that name (the run went on since).
    stale: list[Path] = field(default_factory=list)
    unreadable: list[Path] = field(default_factory=list)


def _well_formed(report: object) -> bool:
    """The parts of report.json the card shows, of the types it needs."""
    if not (isinstance(report, dict) and isinstance(report.get("checkpoint"), dict)
            and isinstance(report.get("protocol"), dict) and isinstance(report.get("results"), list)):
        return False
    rows_ok = all(isinstance(row, dict) and isinstance(row.get("attack"), str)
                  and isinstance(row.get("correct"), int) and isinstance(row.get("total"), int)
                  for row in report["results"])
    checks = report.get("checks", [])
    return rows_ok and isinstance(checks, list) and all(isinstance(check, dict) for check in checks)


def find_evaluations(checkpoint: Path, sha256: str, weights: str = "raw") -> FoundEvaluations:
    """Reports of ``checkpoint`` (by content) in its default eval folder and the other folders beside it, of
    its ``weights`` (raw, or the average the run kept: a report of the other weights of the same file describes
    another model)."""
    found = FoundEvaluations()
    default = default_out(checkpoint)
    try:
        siblings = sorted(path for path in checkpoint.parent.iterdir() if path.is_dir() and path != default)
    except OSError:
        siblings = []
    for folder in [default, *siblings]:
        path = folder / REPORT
        if not path.is_file():
            continue
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            found.unreadable.append(path)
            continue
        if not isinstance(report, dict) or "lbgat_report" not in report:
            continue  # another tool's report.json
        if not _well_formed(report):
            found.unreadable.append(path)
        elif report["checkpoint"].get("sha256") == sha256:
            # Reports written before weight averaging evaluated the raw weights.
            if report["checkpoint"].get("weights", "raw") == weights:
                found.matching.append(Evaluation(folder, report))
        elif folder == default:
            found.stale.append(path)
    return found
