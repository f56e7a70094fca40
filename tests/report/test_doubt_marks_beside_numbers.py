"""A sanity check that doubts a number is marked beside that number wherever it is shown
(the evaluation's report.md, the printed compare table, the demo's summary.md/summary.json, `lbgat report`'s
Markdown, HTML and trade-off figure, the export's model card), with the stronger attack's number, and the
verdict-to-number mapping of lbgat.evaluate.doubts is the one that every page applies."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from lbgat import demo as demo_module
from lbgat.cli import main
from lbgat.compare import CompareEntry, CompareResult, Outcome, comparison_table
from lbgat.evaluate.checks import CheckInputs, strength_check
from lbgat.evaluate.doubts import doubts_of, mark_text
from lbgat.evaluate.report_files import render_markdown
from lbgat.report import build_report

# A strength warning as `lbgat eval` writes it now (id and measured numbers) ...
STRENGTH_WARNING = {
    "name": "PGD-100 x 5 restarts vs PGD-5", "verdict": "warn", "id": "strength",
    "detail": "PGD-5 IS UNRELIABLE FOR THIS MODEL (a stronger PGD finds many more adversarial examples; suspect "
              "gradient masking): on 100 examples: PGD-5 22.00%, PGD-100x5 12.00% (allowed gap 8.28 points)",
    "measured": {"n": 100, "tested_attack": "pgd5", "tested_steps": 5, "tested_accuracy": 0.22, "strong_steps": 100,
                 "restarts": 5, "strong_accuracy": 0.12, "allowed_gap": 0.0828},
}
MARK = "⚠ PGD-100×5: 12.00%"
TINY = ["--config", "cpu/mnist-5k-demo", "--set", "data.train_size=128", "--set", "schedule.epochs=1",
        "--set", "schedule.decay_epochs=[]", "--no-progress"]


def row(attack: str, kind: str, accuracy: float, steps: int = 0) -> dict[str, Any]:
    return {"attack": attack, "kind": kind, "accuracy": accuracy, "correct": round(1000 * accuracy), "total": 1000,
            "description": attack, "seconds": 1.0, "eps": 0.3, "steps": steps, "step_size": 0.01,
            "random_start": kind != "clean", "kappa": None, "norm": "Linf"}


def crafted(checks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"results": [row("clean", "clean", 0.903), row("fgsm", "fgsm", 0.5, 1), row("pgd5", "pgd", 0.224, 5)],
            "checks": checks}


# ---------------------------------------------------------------- the mapping, in one place
def test_the_strength_check_doubts_the_pgd_it_tested_with_the_stronger_number() -> None:
    doubts = doubts_of(crafted([STRENGTH_WARNING]))
    assert doubts["clean"] == [] and doubts["fgsm"] == []
    assert mark_text(doubts["pgd5"]) == MARK
    assert doubts["pgd5"][0].strong_accuracy == 0.12 and doubts["pgd5"][0].n == 100


def test_an_older_report_without_structured_fields_is_read_from_the_name_and_detail() -> None:
    old = {key: value for key, value in STRENGTH_WARNING.items() if key not in ("id", "measured")}
    doubts = doubts_of(crafted([old]))
    assert mark_text(doubts["pgd5"]) == MARK and doubts["fgsm"] == []


@pytest.mark.parametrize(("check", "doubted"), [
    ({"name": "zero gradients", "verdict": "warn", "detail": "zero gradient"}, {"fgsm", "pgd5"}),
    ({"name": "randomness", "verdict": "warn", "detail": "randomized defense"}, {"fgsm", "pgd5"}),
    ({"name": "square vs white-box", "verdict": "warn", "detail": "Square Attack has decreased"}, {"fgsm", "pgd5"}),
    ({"name": "eps = 0 gives clean accuracy", "verdict": "fail", "detail": "x"}, {"clean", "fgsm", "pgd5"}),
    ({"name": "logits independent of the batch", "verdict": "fail", "detail": "x"}, {"clean", "fgsm", "pgd5"}),
    ({"name": "predictions not collapsed to one class", "verdict": "fail", "detail": "x", "id": "collapse",
      "measured": {"n": 100, "share": 1.0}}, {"clean", "fgsm", "pgd5"}),
    ({"name": "a check of a later version", "verdict": "warn", "detail": "x"}, {"clean", "fgsm", "pgd5"}),
    ({"name": "zero gradients", "verdict": "pass", "detail": "fine"}, set()),
    ({**STRENGTH_WARNING, "verdict": "skipped"}, set()),
])
def test_which_check_doubts_which_number(check: dict[str, Any], doubted: set[str]) -> None:
    doubts = doubts_of(crafted([check]))
    assert {attack for attack, found in doubts.items() if found} == doubted
    if check["verdict"] == "fail":
        assert all(mark_text(found).startswith("✗") for found in doubts.values() if found)


def test_the_strength_check_stores_both_numbers_for_scripts() -> None:
    """A PGD with steps far too small to reach the worst case warns, and report.json gets both accuracies."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)).eval()
    x = torch.rand(40, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    inputs = CheckInputs(x, y, torch.arange(40), 0.3, 0.001, "Linf", seed=0, reference_steps=1,
                         reference_attack="pgd1")
    result = strength_check(model, inputs).to_dict()
    assert result["verdict"] == "warn" and result["id"] == "strength"
    measured = result["measured"]
    assert measured["tested_attack"] == "pgd1" and measured["n"] == 40 and measured["restarts"] == 5
    assert measured["strong_accuracy"] < measured["tested_accuracy"] - measured["allowed_gap"]
    report = {"results": [row("clean", "clean", 1.0), row("pgd1", "pgd", 1.0, 1)], "checks": [result]}
    assert mark_text(doubts_of(report)["pgd1"]) == f"⚠ PGD-100×5: {100 * measured['strong_accuracy']:.2f}%"


# ---------------------------------------------------------------- every page that shows the number
@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny natural run and its `lbgat eval` report, into which the strength warning is written."""
    folder = tmp_path_factory.mktemp("doubts") / "natural"
    assert main(["train", "--method", "natural", "--out", str(folder), *TINY]) == 0
    assert main(["eval", str(folder / "last.pt"), "--attacks", "clean,pgd5", "--n", "40", "--check-n", "0",
                 "--no-progress"]) == 0
    path = folder / "eval-last" / "report.json"
    report = json.loads(path.read_text())
    report["checks"] = [check for check in report["checks"] if check.get("id") != "strength"] + [STRENGTH_WARNING]
    path.write_text(json.dumps(report))
    return folder


def accuracy_text(report: dict[str, Any], attack: str) -> str:
    found = next(item for item in report["results"] if item["attack"] == attack)
    return f"{100 * found['accuracy']:.2f}%"


def test_the_evaluation_report_marks_the_number(run: Path) -> None:
    report = json.loads((run / "eval-last" / "report.json").read_text())
    markdown = render_markdown(report)
    assert f"| {accuracy_text(report, 'pgd5')} {MARK} |" in markdown
    assert f"| {accuracy_text(report, 'clean')} |" in markdown  # the clean number is not doubted
    assert "PGD-5 IS UNRELIABLE" in markdown.split("## Sanity checks")[0]  # the footnote under the results


def test_the_printed_compare_table_marks_the_number(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = json.loads((run / "eval-last" / "report.json").read_text())
    outcome = Outcome(CompareEntry("natural"), run, run / "last.pt", "reused", "reused", report, run / "eval-last", 3.0)
    table = comparison_table(CompareResult([outcome], report=None))  # type: ignore[arg-type]
    assert table is not None
    line = next(line for line in table.splitlines() if line.startswith("natural "))
    # the number, its 95% interval, then the mark
    assert re.search(re.escape(accuracy_text(report, "pgd5")) + r" \[[0-9.]+, [0-9.]+\] " + re.escape(MARK), line), line
    assert "natural, PGD-5: " + MARK in table and "WARNING" in table


def test_the_demo_summary_marks_the_number(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """summary.md and summary.json of the demo carry the mark of the run whose check warned (the comparison
    itself is replaced by four finished outcomes, one of them doubted)."""
    report = json.loads((run / "eval-last" / "report.json").read_text())
    honest = copy.deepcopy(report)
    honest["checks"] = [check for check in honest["checks"] if check.get("id") != "strength"]

    class FakeReport:
        html = tmp_path / "report.html"

    def fake_compare(plan, progress: bool = True) -> CompareResult:
        outcomes = [Outcome(entry, run, run / "last.pt", "reused", "reused", report if index == 2 else honest,
                            run / "eval-last", 1.0) for index, entry in enumerate(plan.entries)]
        return CompareResult(outcomes, FakeReport())  # type: ignore[arg-type]

    monkeypatch.setattr(demo_module, "run_compare", fake_compare)
    (tmp_path / "demo").mkdir()
    demo_module.run_demo(tmp_path / "demo", progress=False)
    summary_md = (tmp_path / "demo" / "summary.md").read_text()
    trades = next(line for line in summary_md.splitlines() if line.startswith("trades (α=6)"))
    assert MARK in trades
    assert all(MARK not in line for line in summary_md.splitlines() if line.startswith(("natural", "pgd-at")))
    rows = json.loads((tmp_path / "demo" / "summary.json").read_text())["rows"]
    assert [bool(item["doubts"]["robust"]) for item in rows] == [False, False, True, False]
    assert rows[2]["doubts"]["robust"][0]["strong_accuracy"] == 0.12
    assert rows[2]["doubts"]["robust"][0]["mark"] == MARK


def test_the_report_pages_and_the_figure_mark_the_number(run: Path, tmp_path: Path) -> None:
    result = build_report([run], tmp_path / "report")
    report = json.loads((run / "eval-last" / "report.json").read_text())
    markdown = result.markdown.read_text()
    interval = r" \[[0-9.]+, [0-9.]+\]"  # each accuracy's 95% interval stands between the number and its mark
    assert re.search(r"\| " + re.escape(accuracy_text(report, "pgd5")) + interval + " " + re.escape(MARK) + r" \|",
                     markdown)
    assert "natural, PGD-5: " + MARK in markdown
    html = result.html.read_text()
    assert re.search(re.escape(accuracy_text(report, "pgd5")) + interval + ' <span class="doubt"', html)
    assert f">{MARK}</span>" in html
    summary = json.loads(result.json.read_text())
    assert summary["runs"][0]["marks"] == {"pgd5": MARK}
    point = summary["figures"][0]["data"]["runs"][0]
    assert point["doubt"] == MARK and point["strong"] == pytest.approx(12.0)
    assert "red ring" in summary["figures"][0]["caption"] and MARK in summary["figures"][0]["caption"]
    ax = result.drawn["tradeoff"].figure.axes[0]
    assert "PGD-100×5: 12.00%" in [text.get_text() for text in ax.texts]  # the whisker's note
    whisker = [line for line in ax.lines if list(line.get_ydata()) == [point["robust"], 12.0]]
    assert whisker, "a whisker from the point down to the stronger attack's number"


def test_the_model_card_marks_the_number(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    assert main(["export", str(run / "last.pt"), "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    report = json.loads((run / "eval-last" / "report.json").read_text())
    assert f"| pgd5 | {accuracy_text(report, 'pgd5')} {MARK} |" in card
    assert "PGD-5 IS UNRELIABLE" in card


def test_text_of_a_check_is_escaped_on_every_page(run: Path, tmp_path: Path) -> None:
    path = run / "eval-last" / "report.json"
    original = path.read_text()
    report = json.loads(original)
    report["checks"].append({"name": "zero gradients", "verdict": "warn",
                             "detail": "<script>alert(1)</script> | *bold* [link](x)"})
    path.write_text(json.dumps(report))
    try:
        result = build_report([run], tmp_path / "report")
        html = result.html.read_text()
        assert "<script>alert" not in html and "&lt;script&gt;" in html
        markdown = result.markdown.read_text()
        assert "\\<script\\>" in markdown and "\\| \\*bold\\* \\[link\\](x)" in markdown
        assert "\\<script\\>" in render_markdown(report)
    finally:
        path.write_text(original)
