"""Writing an evaluation report: report.json (machine-readable), report.md (for people), per-sample flags."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def render_markdown(report: dict[str, Any]) -> str:
    protocol, checkpoint = report["protocol"], report["checkpoint"]
    lines = [
        f"# Robustness report: {checkpoint['arch']} ({checkpoint['method']})",
        "",
        f"Checkpoint `{checkpoint['path']}` (sha256 `{checkpoint['sha256'][:16]}…`, {checkpoint['kind']}, "
        f"{checkpoint['epochs_done']} epochs, {checkpoint['global_step']} steps).",
        "",
        "| attack | accuracy | correct / total | settings | time (s) |",
        "|---|---:|---:|---|---:|",
    ]
    for row in report["results"]:
        lines.append(f"| {row['attack']} | {100 * row['accuracy']:.2f}% | {row['correct']} / {row['total']} "
                     f"| {row['description']} | {row['seconds']:.1f} |")
    version = report["code_version"]
    commit = version.get("git_commit")
    lines += [
        "",
        "## Protocol",
        "",
        f"- data: {protocol['dataset']} ({protocol['data_source']}), {protocol['split']} split, "
        f"{protocol['examples']} (n = {protocol['n']} of {protocol['n_available']})",
        f"- threat model: {protocol['norm']}, eps = {protocol['eps']!r} (as given; 8/255 = {8 / 255:.6f} is different)",
        f"- model in {protocol['bn_mode']} mode, {protocol['dtype']}, on {protocol['device']}, "
        f"batch size {protocol['batch_size']}",
        f"- random start: {protocol['random_start']}; seed {protocol['seed']}",
        f"- reported iterate: {protocol['reported_iterate']}",
        f"- code: lbgat {version['lbgat']}" + (f", commit {commit[:12]}" if commit else "")
        + (" (modified)" if version.get("git_dirty") else ""),
        f"- run: {report['started']}, {report['seconds']:.1f} s",
        "",
    ]
    return "\n".join(lines)


def write_report(report: dict[str, Any], out: Path, *, per_sample: dict[str, torch.Tensor],
                 indices: torch.Tensor) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
    _write_atomic(out / "report.md", render_markdown(report))
    flags = {"indices": indices.tolist(), "correct": {name: flags.int().tolist() for name, flags in per_sample.items()}}
    _write_atomic(out / "per_sample.json", json.dumps(flags) + "\n")
