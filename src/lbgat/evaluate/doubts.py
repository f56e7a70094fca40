"""Which sanity check doubts which reported number, and the mark shown beside that number.

This is the one place that maps a check's verdict to the accuracies it casts doubt on; every table, page and
figure that shows an accuracy (the evaluation's report.md, the compare/demo table and summary files,
``lbgat report``'s pages and trade-off figure, the export's model card) asks it. Only ``warn`` and ``fail``
doubt; ``pass`` and ``skipped`` do not.

- The strength check (PGD-100 x 5 restarts vs PGD-K) doubts the PGD-K it tested: its mark carries the
  stronger attack's number, ``⚠ PGD-100×5: 12.00%`` (measured on the check's subset of the examples).
  When the report has no PGD attack (the check then tests a PGD-20 of its own), it doubts every robust number.
- Checks that catch an attack's gradients misleading it (randomness, softmax outputs, zero gradients,
  dynamic defence, Square beating the white-box attacks) doubt every robust number; the number of classes
  doubts AutoAttack's (its targeted attacks).
- eps = 0 not giving the clean accuracy, logits that depend on the batch, and predictions collapsed to one
  class doubt every number, the clean accuracy included: the evaluation or the model itself is broken.
- A check this version does not know doubts every number (a warning is never dropped silently).

Reports written before checks had an ``id`` and ``measured`` numbers are read by the check's name and by
parsing the strength check's detail line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

WARN_SIGN = "⚠"
FAIL_SIGN = "✗"
SIGNS = {"warn": WARN_SIGN, "fail": FAIL_SIGN}
VERDICT_WORDS = {"warn": "WARNING", "fail": "FAILED"}
# One line for under every table that shows marks.
LEGEND = (f"{WARN_SIGN} / {FAIL_SIGN}: a sanity check of that evaluation warned / failed and casts doubt on the "
          "number beside it; PGD-100×5: the accuracy under PGD-100 with 5 restarts, on the first examples that "
          "the checks run on (a PGD-K far above it overstates the model's robustness).")

ALL, ROBUST, TESTED, AUTOATTACK = "all", "robust", "tested", "aa"
SCOPES = {
    "strength": TESTED,
    "randomness": ROBUST, "softmax_outputs": ROBUST, "zero_gradients": ROBUST, "dynamic_defence": ROBUST,
    "square_vs_white_box": ROBUST,
    "number_of_classes": AUTOATTACK,
    "eps_zero": ALL, "batch_independence": ALL, "collapse": ALL,
}
# What the mark says for each check (the strength and collapse checks say their numbers instead).
SHORT = {
    "randomness": "randomised outputs", "softmax_outputs": "softmax outputs", "zero_gradients": "zero gradients",
    "dynamic_defence": "dynamic defence", "square_vs_white_box": "Square beats white-box",
    "number_of_classes": "too few classes", "eps_zero": "eps = 0 changes accuracy",
    "batch_independence": "batch-dependent logits",
}
# Names of the checks in reports written before checks had an id.
IDS_BY_NAME = {
    "randomness": "randomness", "softmax outputs": "softmax_outputs", "zero gradients": "zero_gradients",
    "dynamic defence": "dynamic_defence", "square vs white-box": "square_vs_white_box",
    "number of classes": "number_of_classes", "eps = 0 gives clean accuracy": "eps_zero",
    "logits independent of the batch": "batch_independence", "predictions not collapsed to one class": "collapse",
}
STRENGTH_NAME = re.compile(r"PGD-(\d+) x (\d+) restarts vs PGD-(\d+)")
STRENGTH_DETAIL = re.compile(r"on (\d+) examples: PGD-(\d+) ([\d.]+)%, PGD-(\d+)x(\d+) ([\d.]+)%")


@dataclass(frozen=True)
class Doubt:
    """One check's doubt about one number."""

    check: str  # the check's name, as the report shows it
    verdict: str  # warn | fail
    mark: str  # shown beside the number: "⚠ PGD-100×5: 12.00%"
    detail: str  # what the check found (its detail line)
    strong_accuracy: float | None = None  # the strength check: the stronger attack's accuracy (a fraction)
    strong_attack: str | None = None  # e.g. "PGD-100×5"
    n: int | None = None  # the examples the check measured on

    @property
    def note(self) -> str:
        """The footnote: the check, its verdict and what it found."""
        return f"{self.mark}: check '{self.check}' {VERDICT_WORDS.get(self.verdict, self.verdict)}: {self.detail}"


def check_id(check: dict[str, Any]) -> str:
    if check.get("id"):
        return str(check["id"])
    name = str(check.get("name", ""))
    if STRENGTH_NAME.fullmatch(name):
        return "strength"
    return IDS_BY_NAME.get(name, name)


def strength_numbers(check: dict[str, Any]) -> dict[str, Any] | None:
    """The strength check's numbers: its ``measured`` record, or (older reports) parsed from its detail."""
    measured = check.get("measured")
    if isinstance(measured, dict) and measured.get("strong_accuracy") is not None:
        return measured
    found = STRENGTH_DETAIL.search(str(check.get("detail", "")))
    if found is None:
        return None
    n, tested_steps, tested, strong_steps, restarts, strong = found.groups()
    return {"n": int(n), "tested_attack": None, "tested_steps": int(tested_steps),
            "tested_accuracy": float(tested) / 100, "strong_steps": int(strong_steps), "restarts": int(restarts),
            "strong_accuracy": float(strong) / 100}


def _tested_attack(check: dict[str, Any], numbers: dict[str, Any] | None,
                   results: list[dict[str, Any]]) -> str | None:
    """The report's attack the strength check tested (None: the report shows no PGD it tested)."""
    if numbers and numbers.get("tested_attack"):
        return str(numbers["tested_attack"])
    steps = numbers.get("tested_steps") if numbers else None
    if steps is None:
        named = STRENGTH_NAME.fullmatch(str(check.get("name", "")))
        steps = int(named.group(3)) if named else None
    pgd = [row for row in results if row.get("kind") == "pgd" and row.get("steps") == steps]
    return str(pgd[0]["attack"]) if pgd else None


def _doubted(check: dict[str, Any], key: str, results: list[dict[str, Any]]) -> list[str]:
    scope = SCOPES.get(key, ALL)
    names = [str(row.get("attack")) for row in results]
    robust = [str(row.get("attack")) for row in results if (row.get("kind") or row.get("attack")) != "clean"]
    if scope == TESTED:
        tested = _tested_attack(check, strength_numbers(check), results)
        return [tested] if tested in names else robust
    if scope == ROBUST:
        return robust
    if scope == AUTOATTACK:
        return [name for name in names if name == "aa"]
    return names


def _doubt(check: dict[str, Any], key: str) -> Doubt:
    verdict = str(check.get("verdict"))
    sign = SIGNS.get(verdict, WARN_SIGN)
    name, detail = str(check.get("name", key)), str(check.get("detail", ""))
    if key == "strength":
        numbers = strength_numbers(check)
        if numbers is not None:
            strong_name = f"PGD-{numbers['strong_steps']}×{numbers['restarts']}"
            return Doubt(name, verdict, f"{sign} {strong_name}: {100 * numbers['strong_accuracy']:.2f}%", detail,
                         float(numbers["strong_accuracy"]), strong_name, numbers.get("n"))
        return Doubt(name, verdict, f"{sign} stronger PGD lower", detail)
    if key == "collapse":
        measured = check.get("measured") if isinstance(check.get("measured"), dict) else {}
        if measured.get("share") is not None:
            return Doubt(name, verdict, f"{sign} {100 * measured['share']:.0f}% one class", detail,
                         n=measured.get("n"))
        return Doubt(name, verdict, f"{sign} one class", detail)
    return Doubt(name, verdict, f"{sign} {SHORT.get(key, name)}", detail)


def doubts_of(report: dict[str, Any]) -> dict[str, list[Doubt]]:
    """Every attack of ``report["results"]`` (an ``lbgat eval`` report.json) with the doubts about its number."""
    results = [row for row in report.get("results") or [] if isinstance(row, dict)]
    found: dict[str, list[Doubt]] = {str(row.get("attack")): [] for row in results}
    for check in report.get("checks") or []:
        if not isinstance(check, dict) or check.get("verdict") not in SIGNS:
            continue
        key = check_id(check)
        doubt = _doubt(check, key)
        for attack in _doubted(check, key, results):
            found[attack].append(doubt)
    return found


def mark_text(doubts: list[Doubt]) -> str:
    """The marks of one number, side by side (empty when nothing doubts it)."""
    return "; ".join(doubt.mark for doubt in doubts)


def marked(value: str, doubts: list[Doubt]) -> str:
    """``22.40% ⚠ PGD-100×5: 12.00%``: a formatted number with its marks."""
    return f"{value} {mark_text(doubts)}" if doubts else value


def footnotes(doubts: dict[str, list[Doubt]], titles: dict[str, str] | None = None) -> list[str]:
    """One line per doubted number: which number, which check, its verdict and what it found."""
    lines = []
    for attack, found in doubts.items():
        for doubt in found:
            lines.append(f"{(titles or {}).get(attack, attack)}: {doubt.note}")
    return lines


def to_records(doubts: list[Doubt]) -> list[dict[str, Any]]:
    """For JSON files: each doubt as a plain mapping."""
    return [{"check": doubt.check, "verdict": doubt.verdict, "mark": doubt.mark, "detail": doubt.detail,
             "note": doubt.note, "strong_attack": doubt.strong_attack, "strong_accuracy": doubt.strong_accuracy,
             "n": doubt.n} for doubt in doubts]
