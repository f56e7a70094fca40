"""Plain LBGAT (Cui et al., ICCV 2021, Eq. 3 and Algorithm 1; docs/methods.md, ``lbgat``), and what the
LBGAT family shares: the guidance knobs, the teacher CE, and the separate-BN ablation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from torch import nn

from .base import MethodParams, TrainAttack
from .guidance import GuidanceParams
from .guided import GuidedMethod
from .registry import register_method
from .teachers import share_all_but_batchnorm

if TYPE_CHECKING:
    from .plugin import Plugin


@dataclass(frozen=True)
class LbgatParams(GuidanceParams):
    """beta: weight of the teacher's CE (paper beta = 1).
    separate_bn: one network for both paths, with separate BatchNorm (Table 2 "†"): the teacher
        shares every other weight of the student."""

    beta: float = 1.0
    separate_bn: bool = False


LP = TypeVar("LP", bound=LbgatParams)


class LbgatFamily(GuidedMethod[LP]):
    """A student guided by a teacher trained jointly with it (from scratch, or from a checkpoint).

    The teacher is in train mode throughout; nothing is detached unless ``detach_teacher``.
    """

    default_warmup = True

    def __init__(self, student: nn.Module, params: LP, attack: TrainAttack | None,
                 teacher: nn.Module | None = None, plugins: Sequence[Plugin] = ()) -> None:
        super().__init__(student, params, attack, teacher, plugins)
        if self.shares_student_weights(params):
            assert teacher is not None
            share_all_but_batchnorm(teacher, student)

    @classmethod
    def shares_student_weights(cls, params: MethodParams) -> bool:
        return isinstance(params, LbgatParams) and params.separate_bn

    def teacher_ce_weight(self) -> float:
        return self.params.beta


@register_method
class Lbgat(LbgatFamily[LbgatParams]):
    """L = MSE(M_r(x'), M_n(x)) + beta * CE(M_n(x), y), x' = CE-PGD on the student (eval mode).

    The paper's Eq. 3 with its label-based "noisy BIM" attack; the student gets no CE of its own.
    The CE-PGD attack is what distinguishes it from LBGAT+TRADES with alpha = 0 (our
    interpretation, since no official code for it was released).
    """

    name = "lbgat"
    description = "LBGAT (Eq. 3): MSE(M_r(x_adv), M_n(x)) + beta CE(M_n(x), y), x_adv = CE-PGD"
    Params = LbgatParams
    attack_objective = "ce"
