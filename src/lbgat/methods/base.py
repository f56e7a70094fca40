"""What every training method is: a loss on one batch, returning its named terms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..attacks import BNMode, Objective, Start, pgd
from ..attacks.input_only import input_only
from ..data.loader import Batch
from ..rng import Stream


@dataclass(frozen=True)
class TrainAttack:
    """The attack a method trains against (L-infinity PGD; objective chosen by the method)."""

    eps: float
    step_size: float
    steps: int
    start: Start
    start_std: float = 0.001
    bn_mode: BNMode = "eval"
    objective: Objective | None = None  # None: the method's own (its ``attack_objective``)
    compiled: bool = False  # the attack's step and projection as one torch.compile'd kernel


@dataclass(frozen=True)
class NoParams:
    """A method without hyperparameters of its own."""


class Method(nn.Module):
    """A training method: owns the student, any extra networks, and computes the batch loss.

    Subclasses set ``name``, ``description``, ``Params`` (a dataclass of hyperparameters named as
    in the LBGAT paper), ``attack_objective`` / ``default_start`` for their training attack, and
    ``uses_teacher``; they implement :meth:`forward`, which returns a dict of named scalar terms
    whose ``"loss"`` entry is what the optimiser minimises.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type] = NoParams
    attack_objective: ClassVar[Objective | None] = None
    default_start: ClassVar[Start] = "uniform"
    uses_teacher: ClassVar[bool] = False
    frozen_teacher: ClassVar[bool] = False  # loaded from checkpoints, never trained (BGAT)
    default_warmup: ClassVar[bool] = False

    def __init__(self, student: nn.Module, params: object, attack: TrainAttack | None,
                 teacher: nn.Module | None = None) -> None:
        super().__init__()
        if not isinstance(params, self.Params):
            raise TypeError(f"{self.name} expects {self.Params.__name__}, got {type(params).__name__}")
        if self.uses_teacher and teacher is None:
            raise ValueError(f"{self.name} needs a teacher network")
        if self.attack_objective is not None and attack is None:
            raise ValueError(f"{self.name} needs a training attack")
        self.student = student
        self.teacher = teacher
        self.params = params
        self.attack = attack

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def adversarial(self, batch: Batch) -> torch.Tensor:
        """The method's training attack on the student (in the attack's BN mode). Under --compile the
        attack runs the compiled student with its weights frozen, so its backward skips the weight
        gradients (lbgat.attacks.input_only)."""
        assert self.attack is not None and self.attack_objective is not None
        return pgd(
            input_only(self.student), batch.x, batch.y,
            eps=self.attack.eps, step_size=self.attack.step_size, steps=self.attack.steps,
            objective=self.attack.objective or self.attack_objective, start=self.attack.start,
            start_std=self.attack.start_std,
            rng=batch.rng, stream=Stream.TRAIN_ATTACK_START, bn_mode=self.attack.bn_mode,
            compiled=self.attack.compiled,
        )

    def trained_networks(self) -> dict[str, nn.Module]:
        """The networks the optimiser updates, by name (one SGD parameter group each)."""
        networks = {"student": self.student}
        if self.teacher is not None:
            networks["teacher"] = self.teacher
        return networks
