"""``lbgat compare``: several methods, one shared recipe, one evaluation protocol, one report; resumable."""

from .engine import (
    ComparePlan,
    CompareResult,
    EvalSettings,
    Outcome,
    comparison_table,
    render_table,
    run_compare,
    training_seconds,
)
from .entries import CompareEntry, parse_methods

__all__ = ["CompareEntry", "ComparePlan", "CompareResult", "EvalSettings", "Outcome", "comparison_table",
           "parse_methods", "render_table", "run_compare", "training_seconds"]
