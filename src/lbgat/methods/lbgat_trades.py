"""LBGAT+TRADES (Cui et al., ICCV 2021): the official code's ``lbgat_loss`` (docs/methods.md, ``lbgat-trades``)."""

from __future__ import annotations

from dataclasses import dataclass

from .guided import TRADES_KL
from .lbgat import LbgatFamily, LbgatParams
from .registry import register_method


@dataclass(frozen=True)
class LbgatTradesParams(LbgatParams):
    """alpha: TRADES KL weight (paper alpha; the official code's --beta; TRADES' beta).
    beta: weight of the teacher's CE (paper beta; hard-coded to 1 in the official code)."""

    alpha: float = 6.0


@register_method
class LbgatTrades(LbgatFamily[LbgatTradesParams]):
    """L = MSE(M_r(x'), M_n(x)) + beta * CE(M_n(x), y) + alpha * (1/B) sum KL(P_r(x) || P_r(x')).

    M_r is the student (robust model), M_n the teacher (natural model) trained jointly from scratch.
    x' = KL-PGD on the student in eval mode from x + 0.001 N(0, I). MSE is the mean over B x C
    logits (torch's default), i.e. per example ||dz||^2 / C. Nothing is detached: the MSE trains
    both networks, the CE only the teacher, the KL only the student. The teacher is always in
    train mode. The student's clean forward runs even when alpha = 0, since it still updates
    BatchNorm's running statistics in the official code; at alpha = 0 it runs without a graph
    (:meth:`GuidedMethod.loss_terms`), the same step without back-propagating a zero.
    """

    name = "lbgat-trades"
    description = "LBGAT+TRADES: MSE(M_r(x_adv), M_n(x)) + beta CE(M_n(x), y) + alpha KL(P_r(x) || P_r(x_adv))"
    Params = LbgatTradesParams
    attack_objective = "kl"
    default_start = "normal"
    regulariser = TRADES_KL
