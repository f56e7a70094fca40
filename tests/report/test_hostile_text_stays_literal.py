"""Reports that cannot be turned against their reader. Hostile text (script, an <img> with
onerror, a line break and a heading, table pipes, backticks, links to javascript:, entities, a comment) in
every field that reaches a page: the report's title, run folder names, method names, their settings and
plug-in settings (a teacher checkpoint's path), model names, evaluation folders, checkpoint paths and hashes,
datasets and protocol fields, attack names and descriptions, AutoAttack's settings, transfer sources, sanity
checks' names and details, consistency problems, code versions, notes and captions built from all of these.
report.html shows all of it as text and runs no script in headless Chromium; report.md, an evaluation's
report.md and an export's model card show it as literal Markdown."""

from __future__ import annotations

import copy
import html
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers.pages import HOSTILE, assert_literal_html, assert_literal_markdown, hostile, hostile_name
from lbgat.checkpoints.checkpoint import load_checkpoint
from lbgat.checkpoints.model_spec import ModelSpec
from lbgat.cli import main
from lbgat.evaluate.report_files import render_markdown as eval_markdown
from lbgat.export.card import CardInputs, render_card
from lbgat.export.evaluations import Evaluation
from lbgat.models.official import KeyLayout, OfficialClass
from lbgat.storage import markdown

TINY = ["--config", "cpu/mnist-5k-demo", "--set", "data.train_size=64", "--no-progress"]
# What the report's pages show of the hostile files below (each tag names the field it was put in).
REPORT_TAGS = ["TITLE", "FOLDER1", "FOLDER2", "FOLDER3", "FOLDER4", "TEACHER", "DATASET", "SPLIT", "BN_MODE",
               "METHOD", "ALPHA", "PLUGIN", "PLUGIN_SETTING", "MODEL", "TEACHER_MODEL", "CHECK", "DETAIL", "ATTACK",
               "SOURCE", "SOURCE_ARCH", "AA_VERSION", "SHA"]
EVAL_TAGS = ["DESCRIPTION", "ATTACK", "DATASET", "SPLIT", "EXAMPLES", "DATA_SOURCE", "BN_MODE", "DTYPE", "DEVICE",
             "SHARDING", "REPORTED_ITERATE", "PRESET", "CHECKPOINT_PATH", "CHECKPOINT_ARCH", "CHECKPOINT_METHOD",
             "CHECK", "DETAIL", "SOURCE", "SOURCE_ARCH", "AA_VERSION", "AA_SOURCE", "AA_HOW", "AA_RESUMED", "AA_STEP",
             "PROBLEM", "CONSISTENCY_NORM", "VERSION", "COMMIT", "STARTED", "SEED"]
CARD_TAGS = ["TEACHER", "EVALFOLDER", "DESCRIPTION", "ATTACK", "DATASET", "EXAMPLES", "CHECK", "DETAIL", "AA_VERSION",
             "AA_ATTACK", "EXPORT", "VERSION", "STARTED"]


def _row(attack: str, kind: str, accuracy: float, **more: Any) -> dict[str, Any]:
    return {"attack": attack, "kind": kind, "description": hostile("DESCRIPTION"), "accuracy": accuracy,
            "correct": round(32 * accuracy), "total": 32, "seconds": 0.1, "eps": 0.3, "steps": 5, "step_size": 0.1,
            "random_start": True, "kappa": None, "norm": "Linf", **more}


def make_hostile(report: dict[str, Any]) -> None:
    """Hostile text in every text field of an ``lbgat eval`` report.json (the checkpoint's hash kept, so an
    export still finds it)."""
    for row in report["results"]:
        row["description"] = hostile("DESCRIPTION")
    for key in ("dataset", "split", "examples", "data_source", "bn_mode", "dtype", "device", "sharding",
                "reported_iterate", "preset", "seed"):
        report["protocol"][key] = hostile(key.upper())
    report["checkpoint"].update(path=hostile("CHECKPOINT_PATH"), arch=hostile("CHECKPOINT_ARCH"),
                                method=hostile("CHECKPOINT_METHOD"), plugins=[hostile("CHECKPOINT_PLUGIN")])
    report["checks"].append({"name": hostile("CHECK"), "verdict": "warn", "detail": hostile("DETAIL")})
    report["consistency"].append({"attack": hostile("ATTACK"), "max_perturbation": 0.1, "eps": 0.3,
                                  "norm": hostile("CONSISTENCY_NORM"), "max_box_violation": 0.0, "ok": False,
                                  "problem": hostile("PROBLEM")})
    report["transfer"] = {"source": hostile("SOURCE"), "source_arch": hostile("SOURCE_ARCH"),
                          "source_sha256": hostile("SOURCE_SHA")}
    report["results"] += [
        _row(hostile("ATTACK"), hostile("KIND"), 0.25),
        _row("transfer-pgd5", "transfer", 0.5),
        _row("aa", "aa", 0.125, clean_accuracy=0.5, autoattack={
            "version": hostile("AA_VERSION"), "source": hostile("AA_SOURCE"), "seed": 0, "batch_size": 32,
            "n_target_classes": 9, "how": hostile("AA_HOW"), "resumed_after": [hostile("AA_RESUMED")],
            "attacks": [hostile("AA_ATTACK")]},
            cascade=[{"attack": hostile("AA_STEP"), "robust_accuracy": 0.125, "skipped": False, "robust": 4,
                      "seconds": 0.5}]),
    ]
    report["code_version"] = {"lbgat": hostile("VERSION"), "git_commit": hostile("COMMIT"), "git_dirty": True}
    report["started"] = hostile("STARTED")


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _edit_config(path: Path, edit) -> None:
    config = yaml.safe_load(path.read_text())
    edit(config)
    path.write_text(yaml.safe_dump(config))


def _hostile_method(config: dict[str, Any]) -> None:
    config["method"] = {"name": hostile("METHOD"), "alpha": hostile("ALPHA"), "plugins": [hostile("PLUGIN")],
                        hostile("PLUGIN"): {"k": hostile("PLUGIN_SETTING")}}
    config["model"], config["teacher"] = hostile("MODEL"), hostile("TEACHER_MODEL")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, list[Path], Path]:
    """A tiny pgd-at + VFD run in a hostile folder, its teacher in another, evaluated into a hostile folder
    whose report.json is then made hostile throughout; three copies: one the same setting and seed (told
    apart by folder name), one another seed (the two are a seed group), one with a hostile method, model and
    teacher and no training curves (a note names its folder)."""
    root = tmp_path_factory.mktemp("hostile")
    # The setting: method.vfd.checkpoint=<svg onload=alert(2)>/nat/last.pt (a value --set reads as YAML
    # cannot hold the line break the other names have).
    teacher = root / 'TEACHER <svg onload=alert(3)> x"><img src=x onerror=alert(2)> a|b' / "nat"
    assert main(["train", "--method", "natural", *TINY, "--set", "data.val_size=0", "--max-steps", "2",
                 "--out", str(teacher)]) == 0
    first = root / hostile_name("FOLDER1")
    assert main(["train", "--method", "pgd-at", "--plugin", "vfd", "--set", f"method.vfd.checkpoint={teacher}/last.pt",
                 *TINY, "--set", "data.val_size=32", "--set", "schedule.epochs=1", "--out", str(first)]) == 0
    evaluation = first / ("eval-" + hostile_name("EVALFOLDER"))
    assert main(["eval", str(first / "last.pt"), "--attacks", "clean,pgd5", "--n", "32", "--check-n", "0",
                 "--batch-size", "32", "--no-progress", "--out", str(evaluation)]) == 0
    _edit_json(evaluation / "report.json", make_hostile)
    second = Path(shutil.copytree(first, root / hostile_name("FOLDER2")))
    third = Path(shutil.copytree(first, root / hostile_name("FOLDER3")))
    _edit_config(third / "config.yaml", lambda config: config.update(seed=config["seed"] + 1))
    odd = Path(shutil.copytree(first, root / hostile_name("FOLDER4")))
    _edit_config(odd / "config.yaml", _hostile_method)
    (odd / "metrics.jsonl").unlink()
    _edit_json(odd / evaluation.name / "report.json", lambda report: report["checkpoint"].update(sha256=hostile("SHA")))
    return root, [first, second, third, odd], evaluation


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report"
    assert main(["report", *map(str, runs[1]), "--out", str(out), "--title", hostile("TITLE")]) == 0
    return out


def test_markdown_text_is_literal_wherever_it_stands() -> None:
    """lbgat.storage.markdown: each hostile piece, at the start of a line, in a list item, in a table cell and as an
    inline code span, is text; lbgat's own brackets and "<" stay readable."""
    for piece in [*HOSTILE, "- a", "1. a", "---", "> a", "+ a", "=", "[d]: /x", "[ ] task", "a\\", "```"]:
        lines = [markdown.text(piece), f"- {markdown.text(piece)}", "| a | b |", "|---|---|",
                 f"| {markdown.text(piece)} | {markdown.code(piece, in_table=True)} |", "",
                 f"x {markdown.code(piece)} y", markdown.fenced(piece), markdown.text(piece)]
        assert_literal_markdown("\n".join(lines), [])
        assert "\n" not in markdown.text(piece) and "\n" not in markdown.code(piece)
    assert markdown.text("natural [seed0]") == "natural [seed0]"
    own = "a − b = +2.1 points [−0.4, +4.6], McNemar p < 0.001"
    assert markdown.text(own) == own
    assert markdown.text("[link](x)") == "\\[link\\](x)"
    assert markdown.code("a `b`") == "`` a `b` ``"


def test_report_md_shows_every_hostile_field_as_text(report: Path) -> None:
    assert_literal_markdown((report / "report.md").read_text(), REPORT_TAGS)


def test_report_html_shows_every_hostile_field_as_text(report: Path) -> None:
    page = (report / "report.html").read_text()
    assert_literal_html(page, REPORT_TAGS, title=hostile("TITLE"))
    summary = json.loads((report / "report.json").read_text())
    assert summary["title"] == hostile("TITLE")  # the data keeps the text as it was given
    assert len(summary["runs"]) == 4 and summary["seeds"] and summary["paired"]["comparisons"]


def test_an_evaluations_report_md_shows_every_hostile_field_as_text(runs) -> None:
    report = json.loads((runs[2] / "report.json").read_text())
    assert_literal_markdown(eval_markdown(report), EVAL_TAGS)


def test_the_model_card_shows_every_hostile_field_as_text(runs) -> None:
    """Through `lbgat export`: the teacher's path in the plug-in settings, the evaluation beside the checkpoint
    (its folder, attacks, protocol, checks) and the export's own folder name in the loading snippets."""
    root, folders, evaluation = runs
    out = root / hostile_name("EXPORT")
    assert main(["export", str(folders[0] / "last.pt"), "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert_literal_markdown(card, CARD_TAGS)
    assert "## Evaluation" in card and "Not evaluated" not in card


def _hostile_strings(value: Any, path: str) -> Any:
    if isinstance(value, str):
        return hostile(path)
    if isinstance(value, dict):
        return {key: _hostile_strings(item, f"{path}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [_hostile_strings(item, f"{path}[{index}]") for index, item in enumerate(value)]
    return value


def test_every_text_the_model_card_quotes_is_literal(runs) -> None:
    """The card from a checkpoint whose every recorded text is hostile (architecture, method, plug-ins, dataset,
    settings, code version), an evaluation the same, and a key layout whose names are: all literal, the
    loading snippets in code blocks that nothing closes."""
    root, folders, evaluation = runs
    meta = _hostile_strings(copy.deepcopy(load_checkpoint(folders[0] / "last.pt").meta), "META")
    meta["teacher"] = {"arch": hostile("TEACHER_ARCH")}
    report = json.loads((evaluation / "report.json").read_text())
    layout = KeyLayout(hostile("LAYOUT"), hostile("LAYOUT_DESCRIPTION"),
                       (OfficialClass(hostile("PROJECT"), hostile("IMPORTS"), hostile("CONSTRUCTOR")),),
                       limitation=hostile("LIMITATION"))
    card = render_card(CardInputs(
        spec=ModelSpec(hostile("ARCH"), 10, 3, 32, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]), layout=layout,
        meta=meta, checkpoint_name=hostile("CHECKPOINT_NAME"), checkpoint_sha256=hostile("CHECKPOINT_SHA"),
        weights_sha256=hostile("WEIGHTS_SHA"), num_tensors=3, num_parameters=10, dtypes=hostile("DTYPES"),
        evaluations=[Evaluation(Path(hostile_name("EVALUATION_FOLDER")), report)], folder_name=hostile("FOLDER"),
        exported_with={"lbgat": hostile("EXPORTED_WITH"), "git_commit": hostile("EXPORTED_COMMIT")}))
    shown = ["ARCH", "LAYOUT", "LAYOUT_DESCRIPTION", "PROJECT", "IMPORTS", "CONSTRUCTOR", "LIMITATION",
             "CHECKPOINT_NAME", "CHECKPOINT_SHA", "WEIGHTS_SHA", "DTYPES", "EVALUATION_FOLDER", "FOLDER",
             "EXPORTED_WITH", "TEACHER_ARCH", "META.config.method.name", "META.dataset.name", "META.kind",
             "META.code_version.lbgat", "META.config.attack.bn_mode", "META.config.precision"]
    assert_literal_markdown(card, shown)
    assert card.startswith("# ARCH \\<script\\>document.title=")  # the title's tag escaped


PROBE = """<script>
  window.__alerts = []; window.__errors = [];
  ["alert", "confirm", "prompt", "print", "open"].forEach(function (name) {
    window[name] = function (message) { window.__alerts.push(name + ": " + message); }; });
  window.addEventListener("error", function (e) {
    window.__errors.push(e.message || (e.target && (e.target.src || e.target.href)) || "error"); }, true);
  window.addEventListener("load", function () {
    var handlers = 0;
    Array.prototype.forEach.call(document.querySelectorAll("*"), function (element) {
      Array.prototype.forEach.call(element.attributes, function (attribute) {
        if (attribute.name.indexOf("on") === 0) { handlers += 1; } }); });
    var out = document.createElement("pre"); out.id = "lbgat-probe";
    out.textContent = JSON.stringify({title: document.title, alerts: window.__alerts, errors: window.__errors,
      scripts: document.scripts.length, handlers: handlers, svgs: document.querySelectorAll("svg").length,
      images: Array.prototype.map.call(document.images, function (img) { return img.naturalWidth; })});
    document.body.appendChild(out); });
</script>"""


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="headless Chromium is not installed: apt-get install chromium")
def test_the_hostile_report_runs_no_script_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    """The page, with a probe first in <head> that records any alert/confirm/prompt, error and handler: no
    script but the probe, no event handler, no <svg>, no alert, no error, no console message; the title
    is the hostile text as text (its script would have set it to PWNED)."""
    page = report / "probe.html"
    page.write_text((report / "report.html").read_text().replace("<head>", "<head>" + PROBE, 1))
    try:
        completed = subprocess.run(
            ["chromium", "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=10000", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120)
    finally:
        page.unlink()
    assert completed.returncode == 0, completed.stderr[-2000:]
    console = [line for line in completed.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    marker = '<pre id="lbgat-probe">'
    assert marker in completed.stdout, completed.stdout[-2000:]
    found = json.loads(html.unescape(completed.stdout.split(marker, 1)[1].split("</pre>", 1)[0]))
    assert found["alerts"] == [] and found["errors"] == []
    assert found["scripts"] == 1 and found["handlers"] == 0 and found["svgs"] == 0
    assert " ".join(found["title"].split()) == " ".join(hostile("TITLE").split())  # not "PWNED"
    assert found["images"] and all(width > 0 for width in found["images"])
