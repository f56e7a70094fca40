"""The main job: four methods trained on the embedded MNIST subset on CPU, evaluated, compared.

Everything it runs is an ordinary recipe (``configs/cpu/mnist-5k-demo.yaml``) plus the method,
so each row can be reproduced with ``lbgat train`` and ``lbgat eval``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import build_config, load_yaml
from .demo_files import clear_demo_outputs, quick_folder
from .evaluate import EvalRequest, evaluate_checkpoint
from .files import strict_json, write_text_atomic
from .recipes import find_recipe
from .train import train
from .train.run_dir import LAST

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


ROWS = (
    DemoRow("natural", {}),
    DemoRow("pgd-at", {}),
    DemoRow("trades", {"alpha": 6.0}),
    DemoRow("lbgat-trades", {"alpha": 0.0}),
)
# Quick mode exercises the whole pipeline in seconds; its numbers mean nothing.
QUICK_STEPS = 3
QUICK_EVAL_N = 64


def _train_row(row: DemoRow, run_dir: Path, recipe: dict[str, Any], quick: bool, progress: bool) -> Path:
    flags = {"method.name": row.method, "out": str(run_dir), "max_steps": QUICK_STEPS if quick else None}
    overrides = [f"method.{name}={value}" for name, value in row.params.items()]
    config = build_config(recipe, flags, overrides)
    # Re-running the demo continues (or simply re-uses) earlier runs instead of refusing them.
    result = train(config, resume=(run_dir / LAST).exists(), progress=progress)
    return result.last


def render_table(rows: list[dict[str, Any]], header: str) -> str:
    width = max(len(row["label"]) for row in rows)
    lines = [header, "", f"{'method':<{width}}  {'clean':>7}  {rows[0]['robust_name']:>7}  {'train s':>7}"]
    for row in rows:
        lines.append(f"{row['label']:<{width}}  {100 * row['clean']:6.2f}%  {100 * row['robust']:6.2f}%  "
                     f"{row['train_seconds']:7.0f}")
    return "\n".join(lines)


def run_demo(out: Path, *, quick: bool = False, fresh: bool = False, progress: bool = True) -> list[dict[str, Any]]:
    recipe = load_yaml(find_recipe(RECIPE))
    if quick:
        out = quick_folder(out)
    if fresh:
        clear_demo_outputs(out, [row.folder for row in ROWS])
    results: list[dict[str, Any]] = []
    protocol: dict[str, Any] = {}
    for row in ROWS:
        run_dir = out / row.folder
        print(f"== {row.label}: training into {run_dir}", flush=True)
        started = time.perf_counter()
        last = _train_row(row, run_dir, recipe, quick, progress)
        train_seconds = _train_seconds(run_dir, time.perf_counter() - started)
        request = EvalRequest(checkpoint=last, attacks="clean,pgd",
                              n=QUICK_EVAL_N if quick else None, out=run_dir / "eval-last")
        report, report_dir = evaluate_checkpoint(request, progress=progress)
        clean, robust = report["results"]
        protocol = report["protocol"] | {"robust": robust}
        results.append({"label": row.label, "method": row.method, "params": row.params, "clean": clean["accuracy"],
                        "robust": robust["accuracy"], "robust_name": f"PGD-{robust['steps']}",
                        "train_seconds": train_seconds, "run": str(run_dir), "report": str(report_dir / "report.md")})
    robust = protocol["robust"]
    caveat = " (quick smoke run: numbers meaningless)" if quick else ""
    header = (f"{protocol['dataset']} test split, n = {protocol['n']}{caveat}\n"
              f"robust = PGD-{robust['steps']}: L-inf eps = {robust['eps']:g}, {robust['steps']} steps of "
              f"{robust['step_size']:g}, uniform random start, final iterate, model in eval mode")
    table = render_table(results, header)
    write_text_atomic(out / "summary.md", "```\n" + table + "\n```\n")
    write_text_atomic(out / "summary.json", strict_json({"protocol": protocol, "rows": results}, indent=2) + "\n")
    print()
    print(table)
    print()
    print(f"runs: {out}/<method>/ (config.yaml, metrics.jsonl, last.pt); reports: {out}/<method>/eval-last/report.md")
    print(f"this table: {out / 'summary.md'}")
    return results


def _train_seconds(run_dir: Path, fallback: float) -> float:
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
