"""MART (Wang et al., ICLR 2020), as in the official ``mart_loss``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.loader import Batch
from .base import LossTerms, Method, MethodParams
from .registry import register_method
from .step import ADV, CLEAN, ForwardName, Forwards
from .underflow import softmax_with_limit

LOG_EPS = 1e-12  # the official code's guards inside the logarithms and the weight
MARGIN_EPS = 1.0001
WEIGHT_EPS = 1.0000001


@dataclass(frozen=True)
class MartParams(MethodParams):
    """beta: weight of the misclassification-aware KL term (official --beta: 6 for WRN-34-10, 5 for ResNet-18)."""

    beta: float = 6.0


def boosted_ce(logits_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """BCE: CE(z', y) + NLL(log(1.0001 - p'), y_hat), y_hat the most likely wrong class under p'."""
    probs_adv = F.softmax(logits_adv, dim=1)
    top2 = torch.argsort(probs_adv, dim=1)[:, -2:]
    wrong = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    return F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(MARGIN_EPS - probs_adv + LOG_EPS), wrong)


def misclassification_aware_kl(logits_clean: torch.Tensor, logits_adv: torch.Tensor,
                               y: torch.Tensor) -> torch.Tensor:
    """(1/B) sum_i KL(p_i || p'_i) * (1.0000001 - p_i[y_i]): the KL weighted by how unsure the clean
    prediction of the true class is; nothing detached. Where a clean probability underflows to 0 its
    gradient is the finite limit (:mod:`lbgat.methods.underflow`), not NaN."""
    probs_adv = F.softmax(logits_adv, dim=1)
    probs_clean = softmax_with_limit(logits_clean, dim=1)
    true_probs = torch.gather(probs_clean, 1, y.unsqueeze(1).long()).squeeze()
    kl = F.kl_div(torch.log(probs_adv + LOG_EPS), probs_clean, reduction="none").sum(dim=1)
    return (1.0 / logits_clean.shape[0]) * torch.sum(kl * (WEIGHT_EPS - true_probs))


@register_method
class Mart(Method[MartParams]):
    """L = BCE(f(x'), y) + beta * (1/B) sum KL(p(x) || p(x')) (1 - p_y(x)), x' = CE-PGD from x + 0.001 N.

    As in the official code: the attack in eval mode, then f(x) and f(x') in train mode, in that order.
    """

    name = "mart"
    description = "MART: boosted CE on x_adv + beta * KL(p(x) || p(x_adv)) weighted by 1 - p_y(x)"
    Params = MartParams
    attack_objective = "ce"
    default_start = "normal"

    @classmethod
    def named_forwards(cls, params: MethodParams) -> frozenset[ForwardName]:
        return frozenset({CLEAN, ADV})

    def host_terms(self, batch: Batch, x_adv: torch.Tensor, forwards: Forwards) -> LossTerms:
        logits_clean = forwards.run(batch.x, CLEAN)
        logits_adv = forwards.run(x_adv, ADV)
        bce = boosted_ce(logits_adv, batch.y)
        kl = misclassification_aware_kl(logits_clean, logits_adv, batch.y)
        return {"loss": bce + self.params.beta * kl, "bce": bce, "kl": kl}
