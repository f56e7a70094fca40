"""Plain LBGAT (Cui et al., ICCV 2021, Eq. 3 and Algorithm 1; docs/methods.md, ``lbgat``), and what the
LBGAT family shares: the guidance knobs, the teacher CE, and the separate-BN ablation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.loader import Batch
from .base import Method, TrainAttack
from .guidance import GuidanceParams, guidance_loss, guidance_terms
from .registry import register_method
from .teachers import share_all_but_batchnorm


@dataclass(frozen=True)
class LbgatParams(GuidanceParams):
    """beta: weight of the teacher's CE (paper beta = 1).
    separate_bn: one network for both paths, with separate BatchNorm (Table 2 "†"): the teacher
        shares every other weight of the student."""

    beta: float = 1.0
    separate_bn: bool = False


class LbgatFamily(Method):
    """A student guided by a teacher trained jointly with it (from scratch, or from a checkpoint).

    The teacher is in train mode throughout; nothing is detached unless ``detach_teacher``.
    """

    uses_teacher = True
    default_warmup = True

    def __init__(self, student: nn.Module, params: object, attack: TrainAttack | None,
                 teacher: nn.Module | None = None) -> None:
        super().__init__(student, params, attack, teacher)
        if getattr(params, "separate_bn", False):
            assert teacher is not None
            share_all_but_batchnorm(teacher, student)

    def guided(self, batch: Batch, logits_adv: torch.Tensor) -> dict[str, torch.Tensor]:
        """Guidance terms, the teacher's CE and their weighted sum (as ``loss``)."""
        assert self.teacher is not None
        params = self.params
        logits_teacher = self.teacher(batch.x)
        terms = guidance_terms(logits_adv, logits_teacher, batch.y, params)
        terms["ce_teacher"] = F.cross_entropy(logits_teacher, batch.y)
        terms["loss"] = guidance_loss(terms, params) + params.beta * terms["ce_teacher"]
        return terms


@register_method
class Lbgat(LbgatFamily):
    """L = MSE(M_r(x'), M_n(x)) + beta * CE(M_n(x), y), x' = CE-PGD on the student (eval mode).

    The paper's Eq. 3 with its label-based "noisy BIM" attack; the student gets no CE of its own.
    The CE-PGD attack is what distinguishes it from LBGAT+TRADES with alpha = 0 (our
    interpretation, since no official code for it was released).
    """

    name = "lbgat"
    description = "LBGAT (Eq. 3): MSE(M_r(x_adv), M_n(x)) + beta CE(M_n(x), y), x_adv = CE-PGD"
    Params = LbgatParams
    attack_objective = "ce"

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        assert self.teacher is not None
        x_adv = self.adversarial(batch)
        self.teacher.train()
        return self.guided(batch, self.student(x_adv))
