"""Runs of one setting trained with several seeds (``lbgat compare --seeds``, or any runs given to
``lbgat report`` that differ in nothing but the seed): found from the runs themselves, so a report over
``OUT/trades-alpha6/seed*`` groups them whoever wrote them.

Two runs are replicates when their ``config.yaml`` agrees in everything but ``seed`` and ``out`` and their
evaluations use the same protocol (dataset, test images, attacks); a group needs distinct seeds. Every other
run is a group of its own, so a report without seeds reads as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from ..evaluate.intervals import SeedSpread, seed_spread, spread_text
from .collect import Run
from .figures import ScatterPoint, run_color

NOT_THE_SETTING = ("seed", "out")  # what may differ between replicates


@dataclass(frozen=True)
class SeedGroup:
    label: str
    members: tuple[int, ...]  # indices into the report's runs, in the order given
    seeds: tuple[int | None, ...]

    @property
    def replicated(self) -> bool:
        return len(self.members) > 1


def _key(run: Run) -> str | None:
    if not run.config or run.evaluation is None:
        return None
    setting = {key: value for key, value in run.config.items() if key not in NOT_THE_SETTING}
    protocol = run.evaluation.protocol
    evaluated = {"dataset": protocol.get("dataset"), "n": protocol.get("n"), "examples": protocol.get("examples"),
                 "data": protocol.get("data_fingerprint"),
                 "attacks": [(row.get("attack"), row.get("description")) for row in run.evaluation.results]}
    return json.dumps([setting, evaluated], sort_keys=True, default=str)


def seed_of(run: Run) -> int | None:
    seed = run.config.get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def seed_groups(runs: list[Run]) -> list[SeedGroup]:
    """The runs as groups of replicates, in the order their first run was given."""
    by_key: dict[str, list[int]] = {}
    order: list[list[int]] = []
    for index, run in enumerate(runs):
        key = _key(run)
        members = by_key.get(key) if key is not None and seed_of(run) is not None else None
        if members is not None and seed_of(run) not in {seed_of(runs[i]) for i in members}:
            members.append(index)
            continue
        members = [index]
        order.append(members)
        if key is not None and seed_of(run) is not None and key not in by_key:
            by_key[key] = members
    groups: list[SeedGroup] = []
    for members in order:
        first = runs[members[0]]
        label = first.short_label if len(members) > 1 else first.label
        groups.append(SeedGroup(label, tuple(members), tuple(seed_of(runs[i]) for i in members)))
    _distinct_labels(groups, runs)
    return groups


def _distinct_labels(groups: list[SeedGroup], runs: list[Run]) -> None:
    """Two replicated settings with one method label (e.g. two learning rates) are told apart by the folder
    that holds their seed folders."""
    for index, group in enumerate(groups):
        if group.replicated and [other.label for other in groups].count(group.label) > 1:
            parent = runs[group.members[0]].run_dir
            name = parent.parent.name if parent is not None else str(index + 1)
            groups[index] = SeedGroup(f"{group.label} [{name}]", group.members, group.seeds)


@dataclass(frozen=True)
class SeedRow:
    """One replicated setting in the report's seed table: each attack's mean ± sd and every seed's value."""

    label: str
    seeds: str
    cells: dict[str, str]  # attack name -> "90.30 ± 0.52% (90.3, 89.8, 90.8)"
    spreads: dict[str, SeedSpread]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "seeds": self.seeds, "cells": self.cells,
                "accuracy": {name: spread.to_dict() for name, spread in self.spreads.items()}}


def seed_rows(runs: list[Run], groups: list[SeedGroup], attacks: list[str]) -> list[SeedRow]:
    rows: list[SeedRow] = []
    for group in groups:
        if not group.replicated:
            continue
        cells: dict[str, str] = {}
        spreads: dict[str, SeedSpread] = {}
        for name in attacks:
            values = [runs[i].evaluation.accuracy(name) for i in group.members if runs[i].evaluation is not None]
            if not values or any(value is None for value in values):
                cells[name] = "–"
                continue
            spread = seed_spread(values)  # type: ignore[arg-type]
            spreads[name] = spread
            cells[name] = f"{spread_text(spread)} ({', '.join(f'{100 * value:.1f}' for value in values)})"
        rows.append(SeedRow(group.label, ", ".join(str(seed) for seed in group.seeds), cells, spreads))
    return rows



def seed_points(points: dict[int, ScatterPoint], groups: list[SeedGroup]
                ) -> tuple[list[ScatterPoint], list[ScatterPoint]]:
    """The trade-off's points when some settings have several seeds: one per setting (the mean over its
    seeds, with the standard deviation over seeds) and each seed's own point, to draw faintly."""
    shown: list[ScatterPoint] = []
    faint: list[ScatterPoint] = []
    for number, group in enumerate(groups):
        members = [points[index] for index in group.members if index in points]
        if not members:
            continue
        color = run_color(number)
        if len(members) == 1:
            shown.append(replace(members[0], label=group.label, color=color))
            continue
        clean = seed_spread([point.clean for point in members])
        robust = seed_spread([point.robust for point in members])
        shown.append(ScatterPoint(group.label, clean.mean, robust.mean, color, clean.sd, robust.sd))
        faint += [replace(point, color=color) for point in members]
    return shown, faint
