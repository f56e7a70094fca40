"""BGAT (the static-teacher predecessor of LBGAT; "ADT" in the CVPR-2020 draft; LBGAT paper Eq. 2),
and its +TRADES and +ALP combinations (LBGAT Tables 3 and 4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from .guidance import GuidanceParams
from .guided import ALP_PAIRING, TRADES_KL, GuidedMethod
from .registry import register_method

BP = TypeVar("BP", bound=GuidanceParams)


class BgatFamily(GuidedMethod[BP]):
    """A student guided by a frozen natural teacher (an ensemble: mean of logits), which is loaded
    from checkpoints (``teacher_checkpoints``), stays in eval mode and is never updated."""

    frozen_teacher = True


@dataclass(frozen=True)
class BgatParams(GuidanceParams):
    """BGAT has no weight of its own: L = MSE(M_r(x'), M_n(x)) (Eq. 2; no student CE, on purpose)."""


@register_method
class Bgat(BgatFamily[BgatParams]):
    """L = MSE(M_r(x'), M_n(x)), M_n frozen, x' = CE-PGD on the student (eval mode, uniform start)."""

    name = "bgat"
    description = "BGAT: MSE(M_r(x_adv), M_n(x)) with a frozen natural teacher ensemble, x_adv = CE-PGD"
    Params = BgatParams
    attack_objective = "ce"


@dataclass(frozen=True)
class BgatTradesParams(GuidanceParams):
    """alpha: TRADES KL weight (Table 4 reports alpha = 0)."""

    alpha: float = 0.0


@register_method
class BgatTrades(BgatFamily[BgatTradesParams]):
    """L = MSE(M_r(x'), M_n(x)) + alpha * KL(P_r(x) || P_r(x')), M_n frozen, x' = KL-PGD (normal start),
    as LBGAT+TRADES without the teacher's CE and updates."""

    name = "bgat-trades"
    description = "BGAT+TRADES: MSE(M_r(x_adv), M_n(x)) + alpha KL(P_r(x) || P_r(x_adv)), frozen teacher"
    Params = BgatTradesParams
    attack_objective = "kl"
    default_start = "normal"
    regulariser = TRADES_KL


@dataclass(frozen=True)
class BgatAlpParams(GuidanceParams):
    """alpha: weight of the logit pairing MSE(M_r(x'), M_r(x)) (paper: 1)."""

    alpha: float = 1.0


@register_method
class BgatAlp(BgatFamily[BgatAlpParams]):
    """L = MSE(M_r(x'), M_n(x)) + alpha * MSE(M_r(x'), M_r(x)), M_n frozen, x' = CE-PGD."""

    name = "bgat-alp"
    description = "BGAT+ALP: MSE(M_r(x_adv), M_n(x)) + alpha MSE(M_r(x_adv), M_r(x)), frozen teacher"
    Params = BgatAlpParams
    attack_objective = "ce"
    regulariser = ALP_PAIRING
