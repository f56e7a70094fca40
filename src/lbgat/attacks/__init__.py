"""Attacks: pure functions (model, x, y) -> x_adv on images in [0, 1].

They follow the input's device and dtype, never move data, and always restore the model's modes.
"""

from .modes import BN_MODES, BNMode, model_mode
from .objectives import OBJECTIVES, Objective, cross_entropy_sum, cw_margin_sum, kl_from_clean_sum
from .pgd import ITERATES, NORMS, STARTS, Iterate, Norm, Start, fgsm, pgd

__all__ = [
    "BN_MODES",
    "BNMode",
    "ITERATES",
    "Iterate",
    "NORMS",
    "Norm",
    "OBJECTIVES",
    "Objective",
    "STARTS",
    "Start",
    "cross_entropy_sum",
    "cw_margin_sum",
    "fgsm",
    "kl_from_clean_sum",
    "model_mode",
    "pgd",
]
