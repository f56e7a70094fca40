"""LBGAT+TRADES (Cui et al., ICCV 2021), spec sections 6.2 and 7: the official ``lbgat_loss``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.loader import Batch
from .guidance import guided_with_regulariser
from .lbgat import LbgatFamily, LbgatParams
from .registry import register_method
from .trades import kl_batchmean


@dataclass(frozen=True)
class LbgatTradesParams(LbgatParams):
    """alpha: TRADES KL weight (paper alpha; the official code's --beta; TRADES' beta).
    beta: weight of the teacher's CE (paper beta; hard-coded to 1 in the official code)."""

    alpha: float = 6.0


@register_method
class LbgatTrades(LbgatFamily):
    """L = MSE(M_r(x'), M_n(x)) + beta * CE(M_n(x), y) + alpha * (1/B) sum KL(P_r(x) || P_r(x')).

    M_r is the student (robust model), M_n the teacher (natural model) trained jointly from scratch.
    x' = KL-PGD on the student in eval mode from x + 0.001 N(0, I). MSE is the mean over B x C
    logits (torch's default), i.e. per example ||dz||^2 / C. Nothing is detached: the MSE trains
    both networks, the CE only the teacher, the KL only the student. The teacher is always in
    train mode. The student's clean forward runs even when alpha = 0, since it still updates
    BatchNorm's running statistics in the official code; at alpha = 0 it runs without a graph
    (:meth:`forward_at_alpha_zero`), the same step without back-propagating a zero.
    """

    name = "lbgat-trades"
    description = "LBGAT+TRADES: MSE(M_r(x_adv), M_n(x)) + beta CE(M_n(x), y) + alpha KL(P_r(x) || P_r(x_adv))"
    Params = LbgatTradesParams
    attack_objective = "kl"
    default_start = "normal"

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        if self.params.alpha == 0.0:
            return self.forward_at_alpha_zero(batch)
        return guided_with_regulariser(self, batch, "kl", kl_batchmean)

    def forward_at_alpha_zero(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The paper's headline alpha = 0: ``guided_with_regulariser``'s forwards in its order, the
        student's clean one without a graph (still in train mode, so BatchNorm's running statistics
        update as in the official code). Its weight-0 KL contributes exactly zero (+-0) to every
        gradient, so skipping that backward leaves the step bit-identical (tests/test_lbgat_alpha_zero.py).
        The KL keeps its graph into M_r(x'), so a non-finite KL still turns the loss non-finite."""
        x_adv = self.adversarial(batch)
        if self.teacher is not None:
            self.teacher.train()
        logits_adv = self.student(x_adv)
        with torch.no_grad():
            logits_clean = self.student(batch.x)
        terms = self.guided(batch, logits_adv)
        terms["kl"] = kl_batchmean(logits_clean, logits_adv)
        terms["loss"] = terms["loss"] + self.params.alpha * terms["kl"]
        return terms
