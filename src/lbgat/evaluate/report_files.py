"""Writing an evaluation report: report.json (machine-readable), report.md (for people), per-sample flags."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from ..errors import WriteError
from ..storage.files import out_of_space, strict_json
from ..storage.markdown import code, text
from ..storage.ownership import check_owned, file_sha256, write_owned
from .doubts import LEGEND, doubts_of, footnotes, marked
from .intervals import interval_of, interval_text

REPORT_FILES = ("report.json", "report.md", "per_sample.json")
WRITER = "lbgat eval"  # the command named in the folder's record (lbgat.storage.ownership)
WHAT = "evaluation folder"
VERDICT_MARKS = {"pass": "pass", "warn": "**WARNING**", "fail": "**FAILED**", "skipped": "skipped"}


def _doubt_lines(report: dict[str, Any]) -> list[str]:
    """The footnote under the results table: each doubted number and the check that doubts it."""
    notes = footnotes(doubts_of(report))
    if not notes:
        return []
    return ["", text(LEGEND), "", *(f"- {text(note)}" for note in notes)]


def _autoattack_lines(row: dict[str, Any]) -> list[str]:
    settings = row["autoattack"]
    resumed = ", ".join(map(str, settings["resumed_after"] or []))
    lines = [
        "",
        f"## AutoAttack ({text(settings['version'])}) cascade",
        "",
        text(f"{settings['source']}; seed {settings['seed']}, batch size {settings['batch_size']}, "
             f"{settings['n_target_classes']} target classes; run in {settings['how']}"
             + (f"; resumed after {resumed}" if resumed else "") + "."),
        "",
        "| after | robust accuracy | robust / total | time (s) |",
        "|---|---:|---:|---:|",
        f"| clean | {100 * row['clean_accuracy']:.2f}% | | |",
    ]
    for step in row["cascade"]:
        accuracy = "" if step["robust_accuracy"] is None else f"{100 * step['robust_accuracy']:.2f}%"
        note = " (skipped: nothing left)" if step["skipped"] else ""
        lines.append(f"| {text(step['attack'])}{note} | {accuracy} | {text(step['robust'])} / {text(row['total'])} "
                     f"| {step['seconds']:.1f} |")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """report.md. Every value from the report (paths, names, settings, a library's message) is written through
    :mod:`lbgat.storage.markdown`, so none of it can add a heading, a column, a link or HTML to the page."""
    protocol, checkpoint = report["protocol"], report["checkpoint"]
    method = "+".join([str(checkpoint["method"]), *(str(s).split("(")[0] for s in checkpoint.get("plugins") or [])]) \
        if checkpoint.get("method") else None
    title = str(checkpoint["arch"]) + (f" ({method})" if method else "")
    trained = (f"{checkpoint['kind']}, {checkpoint['epochs_done']} epochs, {checkpoint['global_step']} steps"
               if checkpoint.get("kind") else checkpoint["format"])
    lines = [
        f"# Robustness report: {text(title)}",
        "",
        f"Checkpoint {code(checkpoint['path'])} (sha256 {code(str(checkpoint['sha256'])[:16])}…, {text(trained)}).",
        "",
        # Reports written before weight averaging evaluated the raw weights and do not say so.
        f"Weights evaluated: {text(checkpoint.get('weights_description', 'raw: the weights as trained'))}.",
        "",
        *[f"Trained with the plug-in {text(summary)}." for summary in checkpoint.get("plugins") or []],
        *([""] if checkpoint.get("plugins") else []),
        "| attack | accuracy | 95% interval | correct / total | settings | time (s) |",
        "|---|---:|---:|---:|---|---:|",
    ]
    doubts = doubts_of(report)
    for row in report["results"]:
        accuracy = marked(f"{100 * row['accuracy']:.2f}%", doubts.get(row["attack"], []))
        lines.append(f"| {text(row['attack'])} | {text(accuracy)} | {interval_text(interval_of(row))} "
                     f"| {text(row['correct'])} / {text(row['total'])} "
                     f"| {text(row['description'])} | {row['seconds']:.1f} |")
    lines += ["", f"95% interval: Wilson score interval over the n = {text(protocol['n'])} test images (test-set "
                  "sampling only; another training seed moves the numbers too, see docs/evaluation.md)."]
    lines += _doubt_lines(report)
    if "transfer" in report:
        source = report["transfer"]
        lines += ["", f"Transfer attacks are crafted on {code(source['source'])} ({text(source['source_arch'])}, "
                      f"sha256 {code(str(source['source_sha256'])[:16])}…) and evaluated on this model."]
    for row in report["results"]:
        if row["attack"] == "aa":
            lines += _autoattack_lines(row)
    lines += ["", "## Sanity checks", "", "| check | verdict | detail |", "|---|---|---|"]
    for check in report.get("checks", []):
        lines.append(f"| {text(check['name'])} | {VERDICT_MARKS[check['verdict']]} | {text(check['detail'])} |")
    lines += ["", "## Consistency of the adversarial inputs", "",
              "| attack | max perturbation | eps | outside [0, 1] by | verdict |", "|---|---:|---:|---:|---|"]
    for row in report.get("consistency", []):
        verdict = "ok" if row["ok"] else f"**INCONSISTENT**: {text(row['problem'])}"
        lines.append(f"| {text(row['attack'])} | {row['max_perturbation']:.6g} ({text(row['norm'])}) "
                     f"| {row['eps']:.6g} | {row['max_box_violation']:.3g} | {verdict} |")
    version = report["code_version"]
    commit = version.get("git_commit")
    preset = f" (preset: {text(protocol['preset'])})" if protocol.get("preset") else ""
    fingerprint = protocol.get("data_fingerprint")
    lines += [
        "",
        "## Protocol" + preset,
        "",
        "- data: " + text(f"{protocol['dataset']} ({protocol['data_source']}), {protocol['split']} split, "
                          f"{protocol['examples']} (n = {protocol['n']} of {protocol['n_available']})")
        + (f"; content sha256 {code(str(fingerprint)[:16])}…" if fingerprint else ""),
        "- threat model: " + text(f"{protocol['norm']}, eps = {protocol['eps']!r}")
        + f" (as given; 8/255 = {8 / 255:.6f} is different)",
        "- " + text(f"model in {protocol['bn_mode']} mode, {protocol['dtype']}, on {protocol['device']}, "
                    f"batch size {protocol['batch_size']}; processes: {protocol['sharding']}"),
        "- " + text(f"float32 arithmetic, TF32: {protocol.get('tf32', 'not recorded')}; convolutions "
                    f"{protocol.get('conv', 'not recorded')}, matmuls {protocol.get('matmul', 'not recorded')}"),
        "- " + text(f"random start: {protocol['random_start']}; seed {protocol['seed']}"),
        "- " + text(f"reported iterate: {protocol['reported_iterate']}"),
        "- " + text(f"sanity checks on the first {protocol['check_n']} examples"),
        "- " + text(f"code: lbgat {version['lbgat']}" + (f", commit {str(commit)[:12]}" if commit else "")
                    + (" (modified)" if version.get("git_dirty") else "")),
        "- " + text(f"run: {report['started']}, ") + f"{report['seconds']:.1f} s",
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
    payload = {name: content.encode("utf-8") for name, content in texts.items()}
    try:
        write_owned(out, WRITER, payload, what=WHAT)
    except OSError as error:  # a full disk: say exactly which files of the folder are this evaluation's
        if not out_of_space(error):
            raise
        written = [name for name, data in payload.items()
                   if file_sha256(out / name) == hashlib.sha256(data).hexdigest()]
        failed = error.filename if isinstance(error.filename, str) else out
        raise WriteError(f"could not write {failed}: {error.strerror or error}; "
                         + _what_is_intact(out, written, [name for name in texts if name not in written])) from None


def _what_is_intact(out: Path, written: list[str], missing: list[str]) -> str:
    saved = (f"{out} holds this evaluation's {', '.join(written)} but not its {', '.join(missing)}" if written
             else f"nothing of this evaluation was saved (an earlier report in {out} is as it was)")
    return f"{saved}; the checkpoint is unchanged: free some space, then run the evaluation again"
