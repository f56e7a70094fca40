"""The LBGAT paper's reported points (``paper_points.yaml``, shipped with the package) for ``--paper``."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

METRICS = ("pgd20", "cw20", "aa")
METRIC_TITLES = {"pgd20": "PGD-20", "cw20": "CW-20", "aa": "AutoAttack"}
# The paper's protocol, stated with every point drawn from it.
PAPER_PROTOCOL = "ε=0.031 (L∞), PGD-20/CW-20 with steps of 0.003, AutoAttack standard, full test set"
SOURCE = "Cui et al., Learnable Boundary Guided Adversarial Training, ICCV 2021"


@dataclass(frozen=True)
class PaperPoint:
    dataset: str
    row: str
    model: str
    tables: tuple[int, ...]
    clean: float  # percent
    robust: dict[str, float]  # metric -> percent

    @property
    def label(self) -> str:
        return self.row + (" (WRN-34-20)" if self.model != "wrn-34-10" else "")


def load_points() -> list[PaperPoint]:
    text = resources.files(__package__).joinpath("paper_points.yaml").read_text(encoding="utf-8")
    entries: list[dict[str, Any]] = yaml.safe_load(text)["points"]
    return [PaperPoint(entry["dataset"], str(entry["row"]), entry["model"], tuple(entry["tables"]),
                       float(entry["clean"]), {metric: float(entry[metric]) for metric in METRICS if metric in entry})
            for entry in entries]


def paper_metric(attack: str | None) -> str:
    """The paper's metric that matches the report's robust attack (PGD-20 when none does)."""
    return attack if attack in METRICS else "pgd20"


def points_for(dataset: str, metric: str) -> list[PaperPoint]:
    """The paper's points for ``dataset`` that report ``metric``; one per distinct (clean, robust) pair
    (the paper repeats a model across tables under different row names: the most-cited name is kept)."""
    chosen: dict[tuple[float, float], PaperPoint] = {}
    for point in load_points():
        if point.dataset != dataset or metric not in point.robust:
            continue
        key = (point.clean, point.robust[metric])
        if key not in chosen or len(point.tables) > len(chosen[key].tables):
            chosen[key] = point
    return list(chosen.values())
