"""Robustness evaluation: white-box attacks over a test split, and the report."""

from .runner import EvalRequest, evaluate_checkpoint
from .specs import AttackSpec, parse_attacks
from .suite import AttackOutcome, SuiteResult, run_suite

__all__ = ["AttackOutcome", "AttackSpec", "EvalRequest", "SuiteResult", "evaluate_checkpoint", "parse_attacks",
           "run_suite"]
