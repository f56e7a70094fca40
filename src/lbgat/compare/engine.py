"""``lbgat compare``: several methods trained with one shared recipe, evaluated with one protocol, and one
report over them all.

Each method trains into ``OUT/<method folder>`` exactly as ``lbgat train --config RECIPE --method M --set ...``
would, and is evaluated into its ``eval-last`` folder as ``lbgat eval RUN/last.pt`` would; the report goes to
``OUT/report``. Run again with the same command, a comparison picks up where it stopped: a finished run is
reused, a stopped one resumes with the trainer's ``--resume`` (bit-for-bit on CPU), and an evaluation whose
request and checkpoint are unchanged is reused (``compare.json`` records them).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..checkpoint import sha256_of
from ..config import TrainConfig, build_config
from ..errors import ConfigError
from ..evaluate import EvalRequest, evaluate_checkpoint
from ..files import check_writable
from ..report import ReportOptions, ReportResult, build_report
from ..report.collect import Evaluation
from ..report.summary import attack_title, strongest
from ..train import train
from ..train.run_dir import LAST, PREVIOUS, RUN_FILES
from ..train.setup import validate
from .entries import CompareEntry
from .marks import cell, footnote, row_doubts
from .state import CompareState

EVAL_FOLDER = "eval-last"
CHANGED_SETTINGS = "--resume with settings that differ from the run:"  # the trainer's refusal
REPORT_FOLDER = "report"


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


@dataclass(frozen=True)
class ComparePlan:
    entries: tuple[CompareEntry, ...]
    out: Path
    recipe: dict[str, Any] | None = None
    flags: dict[str, Any] = field(default_factory=dict)  # training settings by dotted key, for every method
    overrides: tuple[str, ...] = ()  # --set KEY=VALUE, for every method (each entry's own come after)
    evaluation: EvalSettings = EvalSettings()
    report: ReportOptions = ReportOptions()


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


@dataclass
class CompareResult:
    outcomes: list[Outcome]
    report: ReportResult


def run_compare(plan: ComparePlan, *, progress: bool = True) -> CompareResult:
    check_writable(plan.out, "comparison folder")
    # Every method's settings are checked before the first one trains, so a typo costs nothing.
    configs = [_config(plan, entry) for entry in plan.entries]
    for config in configs:
        validate(config)
    plan.out.mkdir(parents=True, exist_ok=True)
    state = CompareState.load(plan.out)
    total = len(plan.entries)
    overall = tqdm(total=2 * total, desc="compare", unit="job", disable=not progress, dynamic_ncols=True,
                   file=sys.stderr, position=0)
    say: Callable[[str], None] = overall.write if progress else print
    outcomes: list[Outcome] = []
    try:
        for number, (entry, config) in enumerate(zip(plan.entries, configs, strict=True), start=1):
            run_dir = plan.out / entry.run_folder
            overall.set_description(f"compare [{number}/{total}] {entry.label}")
            say(f"== [{number}/{total}] {entry.label}: training into {run_dir}")
            started = time.perf_counter()
            last, training = _train(config, run_dir, state, entry, progress, say)
            train_seconds = training_seconds(run_dir, time.perf_counter() - started)
            overall.update(1)
            report, report_dir, evaluation = _evaluate(plan.evaluation, last, run_dir, state, entry, progress, say)
            overall.update(1)
            outcomes.append(Outcome(entry, run_dir, last, training, evaluation, report, report_dir, train_seconds))
    finally:
        overall.close()
    say(f"== report over {total} run{'s' if total != 1 else ''} into {plan.out / REPORT_FOLDER}")
    report = build_report([outcome.run_dir for outcome in outcomes], plan.out / REPORT_FOLDER, plan.report,
                          progress=progress)
    return CompareResult(outcomes, report)


def _config(plan: ComparePlan, entry: CompareEntry) -> TrainConfig:
    flags = {**plan.flags, "method.name": entry.method, "out": str(plan.out / entry.run_folder)}
    return build_config(shared_recipe(plan.recipe, entry.method), flags, [*plan.overrides, *entry.overrides])


def shared_recipe(recipe: dict[str, Any] | None, method: str) -> dict[str, Any] | None:
    """The recipe as one method of a comparison uses it: the recipe's own ``method:`` settings (e.g. TRADES'
    alpha in a TRADES recipe) belong to the method it names, so another method starts from its defaults
    (plus its settings in --methods) instead of being refused an unknown setting."""
    if not recipe or not isinstance(recipe.get("method"), dict) or recipe["method"].get("name") == method:
        return recipe
    return {key: value for key, value in recipe.items() if key != "method"}


def _train(config, run_dir: Path, state: CompareState, entry: CompareEntry, progress: bool,
           say: Callable[[str], None]) -> tuple[Path, str]:
    record = state.entry(entry.run_folder)
    has_checkpoint = (run_dir / LAST).exists() or (run_dir / PREVIOUS).exists()
    if not has_checkpoint and record.get("run_started"):
        _clear_unstarted_run(run_dir, say)
    if not has_checkpoint:
        record.clear()  # a new run: its old evaluation (if any) is no longer about this run
        record["run_started"] = True
        state.save()
    try:
        result = train(config, resume=has_checkpoint, progress=progress)
    except ConfigError as error:
        if has_checkpoint and str(error).startswith(CHANGED_SETTINGS):
            raise ConfigError(f"{run_dir} holds a run of this comparison trained with other settings "
                              f"({str(error)[len(CHANGED_SETTINGS):].strip()}); run the same command as before, or "
                              "choose another --out") from None
        raise
    if not has_checkpoint:
        how = "trained"
    elif result.note and result.note.startswith("nothing to do"):
        how = "reused"
        say(f"   reused the run in {run_dir} ({result.note})")
    else:
        how = "resumed"
        say(f"   resumed the stopped run in {run_dir}")
    return result.last, how


def _clear_unstarted_run(run_dir: Path, say: Callable[[str], None]) -> None:
    """A run this comparison started that stopped before its first checkpoint: its run files (and only
    those) are removed so that it starts again; anything else in the folder makes the trainer refuse."""
    removable = [run_dir / name for name in RUN_FILES if (run_dir / name).is_file()
                 and not (run_dir / name).is_symlink()]
    others = [path for path in run_dir.iterdir() if path not in removable] if run_dir.is_dir() else []
    if others or not removable:
        return
    for path in removable:
        path.unlink()
    say(f"   {run_dir} stopped before its first checkpoint: starting it again")


def _evaluate(settings: EvalSettings, last: Path, run_dir: Path, state: CompareState, entry: CompareEntry,
              progress: bool, say: Callable[[str], None]) -> tuple[dict[str, Any], Path, str]:
    out = run_dir / EVAL_FOLDER
    request = settings.request(last, out)
    asked = {key: value for key, value in asdict(settings).items() if key != "device"}
    record = state.entry(entry.run_folder)
    checkpoint_sha = sha256_of(last)
    earlier = record.get("evaluation") or {}
    report_path = out / "report.json"
    if (earlier.get("request") == asked and earlier.get("checkpoint_sha256") == checkpoint_sha
            and report_path.is_file() and sha256_of(report_path) == earlier.get("report_sha256")):
        say(f"   reused its evaluation in {out}")
        return json.loads(report_path.read_text(encoding="utf-8")), out, "reused"
    say(f"   evaluating {last} into {out}")
    report, report_dir = evaluate_checkpoint(request, progress=progress)
    record["evaluation"] = {"request": asked, "checkpoint_sha256": checkpoint_sha,
                            "report_sha256": sha256_of(report_dir / "report.json")}
    state.save()
    return report, report_dir, "evaluated"


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


def render_table(rows: list[dict[str, Any]], header: str) -> str:
    """The comparison as fixed-width text: one line per method, clean and robust accuracy (each with the marks
    of the sanity checks that doubt it, explained under the table), training time."""
    width = max(len(row["label"]) for row in rows)
    clean = [cell(row["clean"], (row.get("doubts") or {}).get("clean", [])) for row in rows]
    robust = [cell(row["robust"], (row.get("doubts") or {}).get("robust", [])) for row in rows]
    clean_width, robust_width = max(7, *map(len, clean)), max(7, *map(len, robust))
    lines = [header, "", f"{'method':<{width}}  {'clean':>7}".ljust(width + 2 + clean_width)
             + f"  {rows[0]['robust_name']:>7}".ljust(robust_width + 2) + f"  {'train s':>7}"]
    for row, clean_text, robust_text in zip(rows, clean, robust, strict=True):
        lines.append(f"{row['label']:<{width}}  {clean_text:<{clean_width}}  {robust_text:<{robust_width}}  "
                     f"{row['train_seconds']:7.0f}")
    return "\n".join(lines + footnote(rows))


def comparison_table(result: CompareResult) -> str | None:
    """The printed summary: each method's clean accuracy and its accuracy under the strongest white-box
    attack it was evaluated with (the protocol is in the report)."""
    rows: list[dict[str, Any]] = []
    for outcome in result.outcomes:
        evaluation = Evaluation(outcome.report_dir, outcome.report)
        robust, clean = strongest(evaluation), evaluation.accuracy("clean")
        if robust is None or clean is None:
            continue
        rows.append({"label": outcome.entry.label, "clean": clean, "robust": robust["accuracy"],
                     "robust_name": attack_title(robust), "train_seconds": outcome.train_seconds,
                     "doubts": row_doubts(outcome.report, robust["attack"])})
    if not rows:
        return None
    protocol = result.outcomes[0].report["protocol"]
    return render_table(rows, f"{protocol['dataset']} test split, n = {protocol['n']} (protocol: see the report)")
