"""Adversarial Logit Pairing (Kannan et al., 2018): as the LBGAT paper uses it, and the
original mixed-minibatch form of the official ALP code (docs/methods.md, ``alp``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..data.loader import Batch
from .base import LossTerms, Method, MethodParams
from .guidance import pairing_mse
from .registry import register_method
from .step import ADV, CLEAN, ForwardName, Forwards


@dataclass(frozen=True)
class AlpParams(MethodParams):
    """alpha: weight of the logit pairing MSE (LBGAT paper: 1; the ALP README example: 0.5).
    variant: lbgat = CE(M(x'), y) + alpha MSE(M(x'), M(x)) (the LBGAT paper's baseline);
        original = CE with label smoothing over the mixed batch [x, x'] + alpha MSE (Kannan et al.'s code).
    label_smoothing: of the original variant's CE (0.1 in the official ALP code)."""

    alpha: float = 1.0
    variant: Literal["lbgat", "original"] = "lbgat"
    label_smoothing: float = 0.1


@register_method
class Alp(Method[AlpParams]):
    """lbgat variant: L = CE(M(x'), y) + alpha * MSE(M(x'), M(x)), two forwards (x' first).
    original variant: one forward over [x, x'], L = CE_ls([x, x'], [y, y]) + alpha * MSE(M(x), M(x')).
    MSE is the mean over B x C (``nn.MSELoss()``) and flows into both logits; x' = CE-PGD (eval mode).
    """

    name = "alp"
    description = "ALP: CE(M(x_adv), y) + alpha MSE(M(x_adv), M(x)), x_adv = CE-PGD (variant=original: mixed CE)"
    Params = AlpParams
    attack_objective = "ce"

    @classmethod
    def named_forwards(cls, params: MethodParams) -> frozenset[ForwardName]:
        return frozenset({CLEAN, ADV})  # the original variant's as the two halves of its joint forward

    def host_terms(self, batch: Batch, x_adv: torch.Tensor, forwards: Forwards) -> LossTerms:
        params = self.params
        if params.variant == "original":
            size = len(batch.x)
            logits = forwards.joint(torch.cat([batch.x, x_adv]), {CLEAN: slice(0, size), ADV: slice(size, None)})
            logits_clean, logits_adv = logits.chunk(2)
            ce = F.cross_entropy(logits, torch.cat([batch.y, batch.y]), label_smoothing=params.label_smoothing)
            pairing = pairing_mse(logits_clean, logits_adv)
            return {"loss": ce + params.alpha * pairing, "ce_mixed": ce, "pairing": pairing}
        logits_adv = forwards.run(x_adv, ADV)
        logits_clean = forwards.run(batch.x, CLEAN)
        ce_adv = F.cross_entropy(logits_adv, batch.y)
        pairing = pairing_mse(logits_clean, logits_adv)
        return {"loss": ce_adv + params.alpha * pairing, "ce_adv": ce_adv, "pairing": pairing}
