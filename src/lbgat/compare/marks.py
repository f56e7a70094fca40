"""The doubt marks of the printed comparison table (and of the demo's summary.md/summary.json): each row's
clean and robust number with the marks of the sanity checks that doubt it (:mod:`lbgat.evaluate.doubts`),
and the footnote that says which check found what."""

from __future__ import annotations

from typing import Any

from ..evaluate.doubts import LEGEND, doubts_of, to_records


def row_doubts(report: dict[str, Any], robust_attack: str) -> dict[str, list[dict[str, Any]]]:
    """``{"clean": [...], "robust": [...]}``: the doubts about a row's two numbers, as JSON-ready records."""
    doubts = doubts_of(report)
    return {"clean": to_records(doubts.get("clean", [])), "robust": to_records(doubts.get(robust_attack, []))}


def cell(accuracy: float, records: list[dict[str, Any]]) -> str:
    """``22.40% ⚠ PGD-100×5: 12.00%`` (the number right-aligned in 7 characters, as without marks)."""
    number = f"{100 * accuracy:6.2f}%"
    return f"{number} {'; '.join(record['mark'] for record in records)}" if records else number


def footnote(rows: list[dict[str, Any]]) -> list[str]:
    """Lines for under the table: the legend, then each doubted number's check and what it found."""
    lines = [f"{row['label']}, {column if column == 'clean' else row['robust_name']}: {record['note']}"
             for row in rows for column in ("clean", "robust")
             for record in (row.get("doubts") or {}).get(column, [])]
    return ["", LEGEND, *lines] if lines else []
