"""Building a method from its name, its hyperparameters and its networks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ..structured import from_mapping
from .base import Method, MethodParams, TrainAttack
from .registry import get_method


def method_params(name: str, values: Mapping[str, Any] | None = None) -> MethodParams:
    """The typed hyperparameters of method ``name``: defaults overridden by ``values``."""
    return from_mapping(get_method(name).Params, values or {}, where="method")


def create_method(
    name: str,
    student: nn.Module,
    *,
    params: Mapping[str, Any] | MethodParams | None = None,
    attack: TrainAttack | None = None,
    teacher: nn.Module | None = None,
) -> Method:
    """A ready-to-train method. ``params`` may be a mapping (``{"alpha": 6}``) or the typed dataclass.

    Example::

        method = create_method("lbgat-trades", student, teacher=teacher, params={"alpha": 0},
                               attack=TrainAttack(eps=0.031, step_size=0.007, steps=10, start="normal"))
        optimizer = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
        terms = method(batch)          # {"loss", "mse", "ce_teacher", "kl"}
        terms["loss"].backward(); optimizer.step()
    """
    cls = get_method(name)
    if params is None or isinstance(params, Mapping):
        params = method_params(name, params)
    return cls(student, params, attack if cls.attack_objective is not None else None, teacher)
