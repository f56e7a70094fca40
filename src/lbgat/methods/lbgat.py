"""Plain LBGAT (Cui et al., ICCV 2021, Eq. 3 and Algorithm 1), spec section 6.3."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.loader import Batch
from .base import Method
from .registry import register_method


def boundary_guidance(logits_adv: torch.Tensor, logits_teacher: torch.Tensor,
                      labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 3's two terms: MSE(M_r(x'), M_n(x)) (mean over B x C, nothing detached) and CE(M_n(x), y)."""
    return F.mse_loss(logits_adv, logits_teacher), F.cross_entropy(logits_teacher, labels)


@dataclass(frozen=True)
class LbgatParams:
    """beta: weight of the teacher's CE (paper beta = 1)."""

    beta: float = 1.0


@register_method
class Lbgat(Method):
    """L = MSE(M_r(x'), M_n(x)) + beta * CE(M_n(x), y), x' = CE-PGD on the student (eval mode).

    The paper's Eq. 3 with its label-based "noisy BIM" attack; the student gets no CE of its own.
    The CE-PGD attack is what distinguishes it from LBGAT+TRADES with alpha = 0 (spec 6.3; an
    interpretation, since no official code for it was released).
    """

    name = "lbgat"
    description = "LBGAT (Eq. 3): MSE(M_r(x_adv), M_n(x)) + beta CE(M_n(x), y), x_adv = CE-PGD"
    Params = LbgatParams
    attack_objective = "ce"
    default_start = "uniform"
    uses_teacher = True
    default_warmup = True

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        assert self.teacher is not None
        x_adv = self.adversarial(batch)
        self.teacher.train()
        mse, ce_teacher = boundary_guidance(self.student(x_adv), self.teacher(batch.x), batch.y)
        return {"loss": mse + self.params.beta * ce_teacher, "mse": mse, "ce_teacher": ce_teacher}
