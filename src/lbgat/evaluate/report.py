"""Writing an evaluation report: report.json (machine-readable), report.md (for people), per-sample flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..files import strict_json
from ..ownership import check_owned, write_owned
from .doubts import LEGEND, doubts_of, footnotes, marked
from .intervals import interval_of, interval_text

REPORT_FILES = ("report.json", "report.md", "per_sample.json")
WRITER = "lbgat eval"  # the command named in the folder's record (lbgat.ownership)
WHAT = "evaluation folder"
VERDICT_MARKS = {"pass": "pass", "warn": "**WARNING**", "fail": "**FAILED**", "skipped": "skipped"}
MARKDOWN_SPECIAL = str.maketrans({char: "\\" + char for char in "\\`*_[]<>|#"})


def markdown_text(value: object) -> str:
    """Text from a check (which may quote a library's message) as literal Markdown: one line, nothing
    in it read as emphasis, a link, HTML or a table's column break."""
    return " ".join(str(value).split()).translate(MARKDOWN_SPECIAL)


def _doubt_lines(report: dict[str, Any]) -> list[str]:
    """The footnote under the results table: each doubted number and the check that doubts it."""
    notes = footnotes(doubts_of(report))
    if not notes:
        return []
    return ["", markdown_text(LEGEND), "", *(f"- {markdown_text(note)}" for note in notes)]


def _autoattack_lines(row: dict[str, Any]) -> list[str]:
    settings = row["autoattack"]
    lines = [
        "",
        f"## AutoAttack ({settings['version']}) cascade",
        "",
        f"{settings['source']}; seed {settings['seed']}, batch size {settings['batch_size']}, "
        f"{settings['n_target_classes']} target classes; run in {settings['how']}"
        + (f"; resumed after {', '.join(settings['resumed_after'])}" if settings["resumed_after"] else "") + ".",
        "",
        "| after | robust accuracy | robust / total | time (s) |",
        "|---|---:|---:|---:|",
        f"| clean | {100 * row['clean_accuracy']:.2f}% | | |",
    ]
    for step in row["cascade"]:
        accuracy = "" if step["robust_accuracy"] is None else f"{100 * step['robust_accuracy']:.2f}%"
        note = " (skipped: nothing left)" if step["skipped"] else ""
        lines.append(f"| {step['attack']}{note} | {accuracy} | {step['robust']} / {row['total']} "
                     f"| {step['seconds']:.1f} |")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    protocol, checkpoint = report["protocol"], report["checkpoint"]
    method = "+".join([checkpoint["method"], *(s.split("(")[0] for s in checkpoint.get("plugins") or [])]) \
        if checkpoint.get("method") else None
    title = checkpoint["arch"] + (f" ({method})" if method else "")
    trained = (f"{checkpoint['kind']}, {checkpoint['epochs_done']} epochs, {checkpoint['global_step']} steps"
               if checkpoint.get("kind") else checkpoint["format"])
    lines = [
        f"# Robustness report: {title}",
        "",
        f"Checkpoint `{checkpoint['path']}` (sha256 `{checkpoint['sha256'][:16]}…`, {trained}).",
        "",
        *[f"Trained with the plug-in {summary}." for summary in checkpoint.get("plugins") or []],
        *([""] if checkpoint.get("plugins") else []),
        "| attack | accuracy | 95% interval | correct / total | settings | time (s) |",
        "|---|---:|---:|---:|---|---:|",
    ]
    doubts = doubts_of(report)
    for row in report["results"]:
        accuracy = marked(f"{100 * row['accuracy']:.2f}%", doubts.get(row["attack"], []))
        lines.append(f"| {row['attack']} | {markdown_text(accuracy)} | {interval_text(interval_of(row))} "
                     f"| {row['correct']} / {row['total']} "
                     f"| {row['description']} | {row['seconds']:.1f} |")
    lines += ["", f"95% interval: Wilson score interval over the n = {protocol['n']} test images (test-set sampling "
                  "only; another training seed moves the numbers too, see docs/evaluation.md)."]
    lines += _doubt_lines(report)
    if "transfer" in report:
        source = report["transfer"]
        lines += ["", f"Transfer attacks are crafted on `{source['source']}` ({source['source_arch']}, sha256 "
                      f"`{source['source_sha256'][:16]}…`) and evaluated on this model."]
    for row in report["results"]:
        if row["attack"] == "aa":
            lines += _autoattack_lines(row)
    lines += ["", "## Sanity checks", "", "| check | verdict | detail |", "|---|---|---|"]
    for check in report.get("checks", []):
        lines.append(f"| {check['name']} | {VERDICT_MARKS[check['verdict']]} | {markdown_text(check['detail'])} |")
    lines += ["", "## Consistency of the adversarial inputs", "",
              "| attack | max perturbation | eps | outside [0, 1] by | verdict |", "|---|---:|---:|---:|---|"]
    for row in report.get("consistency", []):
        verdict = "ok" if row["ok"] else f"**INCONSISTENT**: {row['problem']}"
        lines.append(f"| {row['attack']} | {row['max_perturbation']:.6g} ({row['norm']}) | {row['eps']:.6g} "
                     f"| {row['max_box_violation']:.3g} | {verdict} |")
    version = report["code_version"]
    commit = version.get("git_commit")
    preset = f" (preset: {protocol['preset']})" if protocol.get("preset") else ""
    lines += [
        "",
        "## Protocol" + preset,
        "",
        f"- data: {protocol['dataset']} ({protocol['data_source']}), {protocol['split']} split, "
        f"{protocol['examples']} (n = {protocol['n']} of {protocol['n_available']})"
        + (f"; content sha256 `{protocol['data_fingerprint'][:16]}…`" if protocol.get("data_fingerprint") else ""),
        f"- threat model: {protocol['norm']}, eps = {protocol['eps']!r} (as given; 8/255 = {8 / 255:.6f} is different)",
        f"- model in {protocol['bn_mode']} mode, {protocol['dtype']}, on {protocol['device']}, "
        f"batch size {protocol['batch_size']}; processes: {protocol['sharding']}",
        f"- float32 arithmetic: TF32 {protocol.get('tf32', 'not recorded')}; convolutions "
        f"{protocol.get('conv', 'not recorded')}, matmuls {protocol.get('matmul', 'not recorded')}",
        f"- random start: {protocol['random_start']}; seed {protocol['seed']}",
        f"- reported iterate: {protocol['reported_iterate']}",
        f"- sanity checks on the first {protocol['check_n']} examples",
        f"- code: lbgat {version['lbgat']}" + (f", commit {commit[:12]}" if commit else "")
        + (" (modified)" if version.get("git_dirty") else ""),
        f"- run: {report['started']}, {report['seconds']:.1f} s",
        "",
    ]
    return "\n".join(lines)


def check_out(out: Path) -> None:
    """Before any work: a report file already in ``out`` is one an earlier ``lbgat eval`` wrote there, unchanged
    (anything else is refused, so an evaluation never replaces a file it did not write)."""
    check_owned(out, REPORT_FILES, WRITER, WHAT)


def write_report(report: dict[str, Any], out: Path, *, per_sample: dict[str, torch.Tensor],
                 indices: torch.Tensor) -> None:
    flags = {"indices": indices.tolist(), "correct": {name: flags.int().tolist() for name, flags in per_sample.items()}}
    texts = {"report.json": strict_json(report, indent=2) + "\n", "report.md": render_markdown(report),
             "per_sample.json": strict_json(flags) + "\n"}
    write_owned(out, WRITER, {name: text.encode("utf-8") for name, text in texts.items()}, what=WHAT)
