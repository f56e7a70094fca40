"""``lbgat compare``: several methods trained with one shared recipe, evaluated with one protocol, and one
report over them all.

Each method trains into ``OUT/<method folder>`` exactly as ``lbgat train --config RECIPE --method M --set ...``
would, and is evaluated into its ``eval-last`` folder as ``lbgat eval RUN/last.pt`` would; the report goes to
``OUT/report``. Run again with the same command, a comparison picks up where it stopped: a finished run is
reused, a stopped one resumes with the trainer's ``--resume`` (bit-for-bit on CPU), and an evaluation whose
request and checkpoint are unchanged is reused (``compare.json`` records them). With ``--seeds`` each method
trains once per seed, into ``OUT/<method folder>/seed<N>`` (:mod:`.seeds`). With ``--launcher slurm`` each run
is a cluster job instead (:mod:`.cluster`), trained and evaluated by the same code (:mod:`.one_run`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..config import TrainConfig, build_config
from ..errors import ConfigError
from ..evaluate.intervals import interval_of
from ..evaluate.runner import check_request
from ..report import ReportOptions, ReportResult, build_report
from ..report.collect import Evaluation
from ..report.summary import attack_title, strongest
from ..storage.files import check_writable
from ..storage.locks import folder_lock
from ..train.setup import validate
from .cluster import refuse_running_jobs, run_on_cluster
from .entries import CompareEntry
from .folders import REPORT_FOLDER, check_out_folders
from .launchers import ClusterOptions
from .marks import footnote, row_doubts
from .one_run import (
    EVAL_FOLDER,
    EvalSettings,
    Outcome,
    PlannedRun,
    clear_unstarted_run,
    evaluate_run,
    has_checkpoint,
    train_run,
    training_seconds,
)
from .seeds import check_layout, seed_folder
from .state import CompareState
from .table import fixed_width_table

# Held-out training images a comparison validates on each epoch when its recipe holds none out: enough for the
# robust-overfitting curve (a binomial standard error of at most 2.2 points), cheap next to an epoch's training.
COMPARE_VAL_SIZE = 500


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
    cluster: ClusterOptions | None = None  # --launcher slurm (or submitit-local): one job per run; None: here


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
    runs = [PlannedRun(entry, seed, seed_folder(entry.run_folder, seed), _config(plan, entry, seed))
            for entry in plan.entries for seed in seeds]
    # Every method's settings are checked before the first one trains, so a typo costs nothing.
    for run in runs:
        validate(run.config)
    check_request(plan.evaluation.request(plan.out / "last.pt", plan.out / EVAL_FOLDER))
    check_layout(plan.out, [entry.run_folder for entry in plan.entries], seeded=plan.seeds is not None)
    check_out_folders(plan.out, [run.folder for run in runs])
    plan.out.mkdir(parents=True, exist_ok=True)
    state = CompareState.load(plan.out)
    if plan.cluster is not None:
        outcomes = run_on_cluster(plan.cluster, plan.out, runs, plan.evaluation, state, progress)
        say: Callable[[str], None] = print
    else:
        refuse_running_jobs(plan.out, runs, state)
        outcomes, say = _run_here(plan, runs, state, progress)
    total = len(runs)
    say(f"== report over {total} run{'s' if total != 1 else ''} into {plan.out / REPORT_FOLDER}")
    report = build_report([outcome.run_dir for outcome in outcomes], plan.out / REPORT_FOLDER, plan.report,
                          progress=progress)
    return CompareResult(outcomes, report)


def _run_here(plan: ComparePlan, runs: list[PlannedRun], state: CompareState,
              progress: bool) -> tuple[list[Outcome], Callable[[str], None]]:
    """The local launcher: each run trained, then evaluated, one after another in this process."""
    total = len(runs)
    overall = tqdm(total=2 * total, desc="compare", unit="job", disable=not progress, dynamic_ncols=True,
                   file=sys.stderr, position=0)
    say: Callable[[str], None] = overall.write if progress else print
    outcomes: list[Outcome] = []
    try:
        for number, run in enumerate(runs, start=1):
            run_dir = plan.out / run.folder
            overall.set_description(f"compare [{number}/{total}] {run.label}")
            say(f"== [{number}/{total}] {run.label}: training into {run_dir}")
            started = time.perf_counter()
            last, training = _train(run.config, run_dir, state, run.folder, progress, say)
            train_seconds = training_seconds(run_dir, time.perf_counter() - started)
            overall.update(1)
            record = state.entry(run.folder)
            report, report_dir, evaluated = evaluate_run(plan.evaluation, last, record.get("evaluation"), progress,
                                                         say)
            if evaluated is not None:
                record["evaluation"] = evaluated
                state.save()
            overall.update(1)
            outcomes.append(Outcome(run.entry, run_dir, last, training, "reused" if evaluated is None else "evaluated",
                                    report, report_dir, train_seconds, run.seed))
    finally:
        overall.close()
    return outcomes, say


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


def _train(config: TrainConfig, run_dir: Path, state: CompareState, folder: str, progress: bool,
           say: Callable[[str], None]) -> tuple[Path, str]:
    # Held from before a stopped run's files are cleared to the end of its training (which takes it again);
    # never through a link: a run folder of the comparison is its own.
    with folder_lock(run_dir, "run directory", through_link=False):
        if not has_checkpoint(run_dir):
            record = state.entry(folder)
            if record.get("run_started"):
                clear_unstarted_run(run_dir, say)
            record.clear()  # a new run: its old evaluation (if any) is no longer about this run
            record["run_started"] = True
            state.save()
        return train_run(config, run_dir, progress, say)


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
