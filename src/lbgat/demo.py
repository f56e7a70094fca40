"""The main job: four methods trained on the embedded MNIST subset on CPU, evaluated, compared, and the
report with its figures written (through :mod:`lbgat.compare`, the engine of ``lbgat compare``).

Everything it runs is an ordinary recipe (``configs/cpu/mnist-5k-demo.yaml``) plus the method,
so each row can be reproduced with ``lbgat train`` and ``lbgat eval``, and the whole with
``lbgat compare --methods natural,pgd-at,trades:alpha=6,lbgat-trades:alpha=0 --config cpu/mnist-5k-demo
--eps 0.2``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .compare import CompareEntry, ComparePlan, EvalSettings, render_table, run_compare
from .compare.marks import row_doubts
from .config import load_yaml
from .demo_files import clear_demo_outputs, quick_folder
from .evaluate.intervals import interval_of
from .recipes import find_recipe
from .storage.files import strict_json, write_text_atomic
from .storage.locks import folder_lock
from .storage.markdown import fenced

RECIPE = "cpu/mnist-5k-demo"


@dataclass(frozen=True)
class DemoRow:
    method: str
    params: dict[str, float]

    @property
    def label(self) -> str:
        shown = ", ".join(f"{'α' if name == 'alpha' else name}={value:g}" for name, value in self.params.items())
        return f"{self.method} ({shown})" if shown else self.method

    @property
    def folder(self) -> str:
        return self.method + "".join(f"-{name[0]}{value:g}" for name, value in self.params.items())

    @property
    def entry(self) -> CompareEntry:
        return CompareEntry(self.method, tuple((name, f"{value:g}") for name, value in self.params.items()),
                            folder=self.folder)


ROWS = (
    DemoRow("natural", {}),
    DemoRow("pgd-at", {}),
    DemoRow("trades", {"alpha": 6.0}),
    DemoRow("lbgat-trades", {"alpha": 0.0}),
)
# Quick mode exercises the whole pipeline in seconds; its numbers mean nothing.
QUICK_STEPS = 3
QUICK_EVAL_N = 64


def run_demo(out: Path, *, quick: bool = False, fresh: bool = False, progress: bool = True,
             seed: int | None = None) -> list[dict[str, Any]]:
    if quick:
        out = quick_folder(out)
    # One demo per folder, from --fresh's deletions to its summary (the comparison takes the same lock again);
    # --fresh deletes nothing through a link, so it takes no lock through one either.
    with folder_lock(out, "demo folder", through_link=not fresh):
        return _run_demo(out, quick, fresh, progress, seed)


def _run_demo(out: Path, quick: bool, fresh: bool, progress: bool, seed: int | None) -> list[dict[str, Any]]:
    recipe = load_yaml(find_recipe(RECIPE))
    if fresh:
        clear_demo_outputs(out, [row.folder for row in ROWS])
    # The demo is a comparison (`lbgat compare`) of four methods with its own run folder names; re-running it
    # reuses (or resumes) earlier runs and evaluations instead of refusing them.
    plan = ComparePlan(entries=tuple(row.entry for row in ROWS), out=out, recipe=recipe,
                       flags={"max_steps": QUICK_STEPS} if quick else {},
                       overrides=() if seed is None else (f"seed={seed}",),
                       # The demo's threat model is the recipe's: evaluated at the eps it was trained for.
                       evaluation=EvalSettings(attacks="clean,pgd", n=QUICK_EVAL_N if quick else None,
                                               eps=recipe["attack"]["eps"]))
    compared = run_compare(plan, progress=progress)
    results: list[dict[str, Any]] = []
    protocol: dict[str, Any] = {}
    for row, outcome in zip(ROWS, compared.outcomes, strict=True):
        clean, robust = outcome.report["results"]
        protocol = outcome.report["protocol"] | {"robust": robust}
        results.append({"label": row.label, "method": row.method, "params": row.params, "clean": clean["accuracy"],
                        "robust": robust["accuracy"], "robust_name": f"PGD-{robust['steps']}",
                        "clean_ci95": interval_of(clean), "robust_ci95": interval_of(robust),
                        "train_seconds": outcome.train_seconds, "run": str(outcome.run_dir),
                        "report": str(outcome.report_dir / "report.md"),
                        "doubts": row_doubts(outcome.report, robust["attack"])})
    robust = protocol["robust"]
    caveat = " (quick smoke run: numbers meaningless)" if quick else ""
    header = (f"{protocol['dataset']} test split, n = {protocol['n']}{caveat}\n"
              f"robust = PGD-{robust['steps']}: L-inf eps = {robust['eps']:g}, {robust['steps']} steps of "
              f"{robust['step_size']:g}, uniform random start, final iterate, model in eval mode")
    table = render_table(results, header)
    write_text_atomic(out / "summary.md", fenced(table) + "\n")
    write_text_atomic(out / "summary.json", strict_json({"protocol": protocol, "rows": results}, indent=2) + "\n")
    print()
    print(table)
    print()
    print(f"runs: {out}/<method>/ (config.yaml, metrics.jsonl, last.pt); reports: {out}/<method>/eval-last/report.md")
    print(f"this table: {out / 'summary.md'}")
    print(f"figures and report (open in a browser): {compared.report.html}")
    return results
