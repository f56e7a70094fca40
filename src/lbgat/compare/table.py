"""The printed comparison table: one line per run with each accuracy's 95% interval over the test images,
and with ``--seeds`` a ``mean ± sd`` line per method under its seeds' lines.

An accuracy cell is two aligned parts, ``95.70%`` and ``[94.3, 96.8]``, so the percent signs and the
brackets line up down a column; a mean line puts ``± sd`` where the interval was.
"""

from __future__ import annotations

import statistics
from typing import Any

from ..evaluate.intervals import interval_text, seed_spread

MEAN = "mean ± sd"
LEGEND = ("[lo, hi]: 95% interval over the n test images (Wilson score; test-set sampling only)")
SEED_LEGEND = "mean ± sd: over seeds (sample standard deviation)"


def _cell(row: dict[str, Any], key: str) -> tuple[str, str]:
    """The accuracy, then its interval followed by the marks of the sanity checks that doubt it (if any)."""
    marks = "; ".join(record["mark"] for record in (row.get("doubts") or {}).get(key, []))
    return f"{100 * row[key]:.2f}%", " ".join(part for part in (interval_text(row.get(f"{key}_ci95")), marks) if part)


def _mean_rows(rows: list[dict[str, Any]]) -> list[tuple[str, str, tuple[str, str], tuple[str, str], float]]:
    """Each method's line under its seeds: mean and sd of each accuracy, mean training time."""
    lines = []
    for label in dict.fromkeys(row["label"] for row in rows):
        mine = [row for row in rows if row["label"] == label]
        cells = []
        for key in ("clean", "robust"):
            spread = seed_spread([row[key] for row in mine])
            cells.append((f"{100 * spread.mean:.2f}%", "" if spread.sd is None else f"± {100 * spread.sd:.2f}"))
        lines.append((label, MEAN, cells[0], cells[1], statistics.fmean(row["train_seconds"] for row in mine)))
    return lines


def fixed_width_table(rows: list[dict[str, Any]]) -> list[str]:
    """rows: label, clean, robust, robust_name, train_seconds, and optionally clean_ci95, robust_ci95 (fractions)
    and seed (an int with --seeds)."""
    seeded = any(row.get("seed") is not None for row in rows)
    lines: list[tuple[str, str, tuple[str, str], tuple[str, str], float]] = []
    for label in dict.fromkeys(row["label"] for row in rows):
        mine = [row for row in rows if row["label"] == label]
        lines += [(label, "" if row.get("seed") is None else str(row["seed"]), _cell(row, "clean"),
                   _cell(row, "robust"), row["train_seconds"]) for row in mine]
        if seeded:
            lines += _mean_rows(mine)
    width = max(len("method"), *(len(line[0]) for line in lines))
    seed_width = max(len("seed"), *(len(line[1]) for line in lines)) if seeded else 0
    titles = ("clean", rows[0]["robust_name"])
    # Each accuracy column: the value right-aligned, then the interval (or ± sd) left-aligned.
    value_width = [max(7, len(titles[i]), *(len(line[2 + i][0]) for line in lines)) for i in range(2)]
    extra_width = [max((len(line[2 + i][1]) for line in lines), default=0) for i in range(2)]

    def accuracy(index: int, value: str, extra: str) -> str:
        return f"{value:>{value_width[index]}}" + (f" {extra:<{extra_width[index]}}" if extra_width[index] else "")

    def assemble(label: str, seed: str, clean: str, robust: str, seconds: str) -> str:
        seed_part = f"  {seed:>{seed_width}}" if seeded else ""
        return f"{label:<{width}}{seed_part}  {clean}  {robust}  {seconds:>7}".rstrip()

    out = [assemble("method", "seed", accuracy(0, titles[0], ""), accuracy(1, titles[1], ""), "train s")]
    for label, seed, clean, robust, seconds in lines:
        out.append(assemble(label, seed, accuracy(0, *clean), accuracy(1, *robust), f"{seconds:7.0f}"))
    legend = LEGEND + (f"; {SEED_LEGEND}" if seeded else "")
    return [*out, "", legend] if any(extra_width) else out
