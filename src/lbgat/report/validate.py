"""What a report needs of an evaluation's report.json before it computes or draws anything with it.

A report.json is a file: edited by hand, written by another version, or cut short. Python's json reads
``NaN`` and ``Infinity``, and a number may have become a string or null; drawn as they are, they fail deep in
matplotlib or scipy. Each value the report computes with is checked here, and the first that is not what
``lbgat eval`` writes is one line naming the file and the value.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value: object) -> str:
    """The value as the file spells it (NaN, null, "0.5"), cut short."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def _refuse(path: Path, where: str, value: object, expected: str) -> ConfigError:
    return ConfigError(f"{path}: {where} is {_shown(value)}, not {expected}; a report cannot show it (evaluate "
                       "again with lbgat eval, or give another evaluation)")


def _check_row(path: Path, index: int, row: object) -> None:
    if not isinstance(row, dict):
        raise _refuse(path, f"results[{index}]", row, "an attack's result")
    attack = row.get("attack")
    if not isinstance(attack, str) or not attack:
        raise _refuse(path, f"results[{index}].attack", attack, "an attack's name")
    where = f"the accuracy of {attack!r}"
    if not _is_number(row.get("accuracy")) or not 0 <= row["accuracy"] <= 1:
        raise _refuse(path, where, row.get("accuracy"), "a number from 0 to 1")
    for key in ("eps", "step_size", "kappa"):
        if row.get(key) is not None and not _is_number(row[key]):
            raise _refuse(path, f"the {key} of {attack!r}", row[key], "a finite number")
    for key in ("steps", "correct", "total"):
        value = row.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise _refuse(path, f"the {key} of {attack!r}", value, "a whole number")
    interval = row.get("ci95")
    if interval is not None and not (isinstance(interval, list) and len(interval) == 2
                                     and all(_is_number(end) and 0 <= end <= 1 for end in interval)):
        raise _refuse(path, f"the ci95 of {attack!r}", interval, "two numbers from 0 to 1")


def check_evaluation(path: Path, data: dict[str, Any]) -> None:
    """Refuse (ConfigError) an evaluation whose results a report cannot compute with; ``path``: its report.json."""
    for key in ("protocol", "checkpoint"):
        if not isinstance(data.get(key, {}), dict):
            raise _refuse(path, key, data[key], "a mapping")
    checkpoint = data.get("checkpoint", {})
    for key in ("sha256", "path", "arch", "method"):
        if checkpoint.get(key) is not None and not isinstance(checkpoint[key], str):
            raise _refuse(path, f"checkpoint.{key}", checkpoint[key], "text")
    epochs = checkpoint.get("epochs_done")
    if epochs is not None and (not isinstance(epochs, int) or isinstance(epochs, bool)):
        raise _refuse(path, "checkpoint.epochs_done", epochs, "a whole number")
    for index, row in enumerate(data["results"]):
        _check_row(path, index, row)
