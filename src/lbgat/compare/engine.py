"""``lbgat compare``: several methods trained with one shared recipe, evaluated with one protocol, and one
report over them all.

Each method trains into ``OUT/<method folder>`` exactly as ``lbgat train --config RECIPE --method M --set ...``
would, and is evaluated into its ``eval-last`` folder as ``lbgat eval RUN/last.pt`` would; the report goes to
``OUT/report``. Run again with the same command, a comparison picks up where it stopped: a finished run is
reused, a stopped one resumes with the trainer's ``--resume`` (bit-for-bit on CPU), and an evaluation whose
request and checkpoint are unchanged is reused (``compare.json`` records them). With ``--seeds`` each method
trains once per seed, into ``OUT/<method folder>/seed<N>`` (:mod:`.seeds`).
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

from ..checkpoints.checkpoint import sha256_of
from ..config import TrainConfig, build_config
from ..errors import ConfigError
from ..evaluate import EvalRequest, evaluate_checkpoint
from ..evaluate.intervals import interval_of
from ..evaluate.runner import check_request
from ..report import ReportOptions, ReportResult, build_report
from ..report.collect import Evaluation
from ..report.summary import attack_title, strongest
from ..storage.files import check_writable
from ..storage.locks import LOCK_FILE, folder_lock
from ..train import train
from ..train.run_dir import LAST, PREVIOUS, RUN_FILES
from ..train.setup import validate
from .entries import CompareEntry
from .folders import EVAL_FOLDER, REPORT_FOLDER, check_out_folders
from .marks import footnote, row_doubts
from .seeds import check_layout, seed_folder
from .state import CompareState
from .table import fixed_width_table

# Held-out training images a comparison validates on each epoch when its recipe holds none out: enough for the
# robust-overfitting curve (a binomial standard error of at most 2.2 points), cheap next to an epoch's training.
COMPARE_VAL_SIZE = 500
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


@dataclass(frozen=True)
class ComparePlan:
    entries: tuple[CompareEntry, ...]
    out: Path
    recipe: dict[str, Any] | None = None
    flags: dict[str, Any] = field(default_factory=dict)  # training settings by dotted key, for every method
    overrides: tuple[str, ...] = ()  # --set KEY=VALUE, for every method (each entry's own come after)
    evaluation: EvalSettings = EvalSettings()
    report: ReportOptions = ReportOptions()
    # data.val_size of every run; None: the recipe's, or COMPARE_VAL_SIZE where the recipe holds nothing out
    val_size: int | None = None
    seeds: tuple[int, ...] | None = None  # --seeds: each method once per seed, in OUT/<method folder>/seed<N>


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


@dataclass
class CompareResult:
    outcomes: list[Outcome]
    report: ReportResult


def run_compare(plan: ComparePlan, *, progress: bool = True) -> CompareResult:
    check_writable(plan.out, "comparison folder")
    # One comparison per folder; the training and evaluation it runs lock their own folders inside it.
    with folder_lock(plan.out, "comparison folder"):
        return _run_compare(plan, progress)


def _run_compare(plan: ComparePlan, progress: bool) -> CompareResult:
    if plan.seeds is not None and any(override.split("=", 1)[0].strip() == "seed" for override in plan.overrides):
        raise ConfigError("--seeds sets each run's seed: leave --set seed=... out")
    seeds: tuple[int | None, ...] = plan.seeds if plan.seeds else (None,)
    jobs = [(entry, seed) for entry in plan.entries for seed in seeds]
    # Every method's settings are checked before the first one trains, so a typo costs nothing.
    configs = [_config(plan, entry, seed) for entry, seed in jobs]
    for config in configs:
        validate(config)
    check_request(plan.evaluation.request(plan.out / "last.pt", plan.out / EVAL_FOLDER))
    check_layout(plan.out, [entry.run_folder for entry in plan.entries], seeded=plan.seeds is not None)
    check_out_folders(plan.out, [seed_folder(entry.run_folder, seed) for entry, seed in jobs])
    plan.out.mkdir(parents=True, exist_ok=True)
    state = CompareState.load(plan.out)
    total = len(jobs)
    overall = tqdm(total=2 * total, desc="compare", unit="job", disable=not progress, dynamic_ncols=True,
                   file=sys.stderr, position=0)
    say: Callable[[str], None] = overall.write if progress else print
    outcomes: list[Outcome] = []
    try:
        for number, ((entry, seed), config) in enumerate(zip(jobs, configs, strict=True), start=1):
            folder = seed_folder(entry.run_folder, seed)
            run_dir = plan.out / folder
            label = entry.label if seed is None else f"{entry.label} seed {seed}"
            overall.set_description(f"compare [{number}/{total}] {label}")
            say(f"== [{number}/{total}] {label}: training into {run_dir}")
            started = time.perf_counter()
            last, training = _train(config, run_dir, state, folder, progress, say)
            train_seconds = training_seconds(run_dir, time.perf_counter() - started)
            overall.update(1)
            report, report_dir, evaluation = _evaluate(plan.evaluation, last, run_dir, state, folder, progress, say)
            overall.update(1)
            outcomes.append(Outcome(entry, run_dir, last, training, evaluation, report, report_dir, train_seconds,
                                    seed))
    finally:
        overall.close()
    say(f"== report over {total} run{'s' if total != 1 else ''} into {plan.out / REPORT_FOLDER}")
    report = build_report([outcome.run_dir for outcome in outcomes], plan.out / REPORT_FOLDER, plan.report,
                          progress=progress)
    return CompareResult(outcomes, report)


def _config(plan: ComparePlan, entry: CompareEntry, seed: int | None = None) -> TrainConfig:
    flags = {**plan.flags, "method.name": entry.method, "out": str(plan.out / seed_folder(entry.run_folder, seed))}
    if seed is not None:
        flags["seed"] = seed
    if plan.val_size is not None:
        flags["data.val_size"] = plan.val_size
    recipe = shared_recipe(plan.recipe, entry.method)
    overrides = [*plan.overrides, *entry.overrides]
    config = build_config(recipe, flags, overrides)
    said_by_user = plan.val_size is not None or any(item.split("=", 1)[0].strip() == "data.val_size"
                                                    for item in overrides)
    if config.data.val_size == 0 and not said_by_user:
        # A comparison is judged by its held-out robust accuracy per epoch (robust overfitting), so it holds
        # a small slice out even where the recipe (a paper recipe) trains on everything.
        config = build_config(recipe, {**flags, "data.val_size": COMPARE_VAL_SIZE}, overrides)
    return config


def shared_recipe(recipe: dict[str, Any] | None, method: str) -> dict[str, Any] | None:
    """The recipe as one method of a comparison uses it: the recipe's own ``method:`` settings (e.g. TRADES'
    alpha in a TRADES recipe) belong to the method it names, so another method starts from its defaults
    (plus its settings in --methods) instead of being refused an unknown setting."""
    if not recipe or not isinstance(recipe.get("method"), dict) or recipe["method"].get("name") == method:
        return recipe
    return {key: value for key, value in recipe.items() if key != "method"}


def _train(config, run_dir: Path, state: CompareState, folder: str, progress: bool,
           say: Callable[[str], None]) -> tuple[Path, str]:
    # Held from before a stopped run's files are cleared to the end of its training (which takes it again);
    # never through a link: a run folder of the comparison is its own.
    with folder_lock(run_dir, "run directory", through_link=False):
        return _train_run(config, run_dir, state, folder, progress, say)


def _train_run(config, run_dir: Path, state: CompareState, folder: str, progress: bool,
               say: Callable[[str], None]) -> tuple[Path, str]:
    record = state.entry(folder)
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
    others = ([path for path in run_dir.iterdir() if path not in removable and path.name != LOCK_FILE]
              if run_dir.is_dir() else [])
    if others or not removable:
        return
    for path in removable:
        path.unlink()
    say(f"   {run_dir} stopped before its first checkpoint: starting it again")


def _evaluate(settings: EvalSettings, last: Path, run_dir: Path, state: CompareState, folder: str,
              progress: bool, say: Callable[[str], None]) -> tuple[dict[str, Any], Path, str]:
    out = run_dir / EVAL_FOLDER
    request = settings.request(last, out)
    asked = {key: value for key, value in asdict(settings).items() if key != "device"}
    record = state.entry(folder)
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
    """The comparison as fixed-width text: one line per run (per seed with --seeds, then the method's mean ± sd),
    clean and robust accuracy with their 95% intervals and the marks of the sanity checks that doubt them
    (explained under the table), training time."""
    return "\n".join([header, "", *fixed_width_table(rows), *footnote(rows)])


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
                     "clean_ci95": interval_of(evaluation.attack("clean") or {}), "robust_ci95": interval_of(robust),
                     "seed": outcome.seed,
                     "doubts": row_doubts(outcome.report, robust["attack"])})
    if not rows:
        return None
    protocol = result.outcomes[0].report["protocol"]
    return render_table(rows, f"{protocol['dataset']} test split, n = {protocol['n']} (protocol: see the report)")
