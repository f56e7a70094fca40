"""LBGAT+ALP (Cui et al., ICCV 2021, Eq. 4 with its first term replaced by Eq. 3); docs/methods.md, ``lbgat-alp``."""

from __future__ import annotations

from dataclasses import dataclass

from .guided import ALP_PAIRING
from .lbgat import LbgatFamily, LbgatParams
from .registry import register_method


@dataclass(frozen=True)
class LbgatAlpParams(LbgatParams):
    """alpha: weight of the logit pairing MSE(M_r(x'), M_r(x)) (paper: 1)."""

    alpha: float = 1.0


@register_method
class LbgatAlp(LbgatFamily[LbgatAlpParams]):
    """L = MSE(M_r(x'), M_n(x)) + beta * CE(M_n(x), y) + alpha * MSE(M_r(x'), M_r(x)).

    No official code: x' = CE-PGD on the student in eval mode (our choice, matching
    ALP), both MSEs mean-reduced over B x C, nothing detached. Forward order: student(x'),
    student(x), teacher(x).
    """

    name = "lbgat-alp"
    description = "LBGAT+ALP: MSE(M_r(x_adv), M_n(x)) + beta CE(M_n(x), y) + alpha MSE(M_r(x_adv), M_r(x))"
    Params = LbgatAlpParams
    attack_objective = "ce"
    regulariser = ALP_PAIRING
