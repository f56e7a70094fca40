"""``lbgat compare``: several methods, one shared recipe, one evaluation protocol, one report; resumable.

The names are imported when first used: a cluster job's process (``python -m lbgat.compare.job``) imports only
what trains and evaluates a run, not the report's plotting libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import ComparePlan, CompareResult, comparison_table, render_table, run_compare
    from .entries import CompareEntry, parse_methods
    from .one_run import EvalSettings, Outcome, training_seconds

_WHERE = {
    "ComparePlan": "engine", "CompareResult": "engine", "comparison_table": "engine", "render_table": "engine",
    "run_compare": "engine", "CompareEntry": "entries", "parse_methods": "entries", "EvalSettings": "one_run",
    "Outcome": "one_run", "training_seconds": "one_run",
}

__all__ = ["CompareEntry", "ComparePlan", "CompareResult", "EvalSettings", "Outcome", "comparison_table",
           "parse_methods", "render_table", "run_compare", "training_seconds"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
