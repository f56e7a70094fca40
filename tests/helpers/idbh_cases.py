"""The IDBH comparison's cases (shared by tools/official_compare/idbh.py, which stores the official outputs, and
tests/data/test_idbh_matches_official.py, which checks lbgat against them): which table each case runs under,
and lbgat's draws for one operation alone."""

from __future__ import annotations

from typing import Any

import torch

from lbgat.data import idbh

SEED = 11  # the whole-pipeline cases: run seed, epochs, dataset indices 0..B-1
EPOCHS = (0, 1)
DRAW_FIELDS = ("flip", "shift", "roll", "strength", "degrees", "negative", "shear_x", "erase_roll", "erase_area",
               "erase_ratio", "erase_place")


def table_version(table: str) -> idbh.Version:
    """A version using the colour-biased ("colour") or shape-biased ("shape") table."""
    return idbh.VERSIONS["idbh-weak" if table == "colour" else "idbh-svhn"]


def operation_draws(operation: str, table: str, batch: int, *, u: float = 0.0, negative: bool = False,
                    shear_x: bool = False, degrees: int = 0) -> idbh.Draws:
    """Draws that run ``operation`` alone: no flip, no shift, no erasing, the roll in the middle of its interval."""
    version = table_version(table)
    chosen = idbh.OPERATIONS.index(operation)
    roll = sum(entry.probability for entry in version.operations[:chosen]) + version.operations[chosen].probability / 2

    def filled(value: Any, dtype: torch.dtype, *shape: int) -> torch.Tensor:
        return torch.full((batch, *shape), value, dtype=dtype)

    return idbh.Draws(
        flip=filled(False, torch.bool), shift=filled(0, torch.int64, 6), roll=filled(roll, torch.float32),
        strength=filled(u, torch.float32), degrees=filled(degrees, torch.int64),
        negative=filled(negative, torch.bool), shear_x=filled(shear_x, torch.bool),
        erase_roll=filled(1.0, torch.float32), erase_area=filled(0.0, torch.float32, idbh.ERASE_TRIES),
        erase_ratio=filled(0.0, torch.float32, idbh.ERASE_TRIES), erase_place=filled(0, torch.int64, 2))
