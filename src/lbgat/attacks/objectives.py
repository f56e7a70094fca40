"""Losses an attack maximises. Each returns the SUM over the batch.

Summing (not averaging) makes every example's input gradient independent of the batch size, so
sign steps are the same whether an example is attacked alone, in a batch of 200, or on another
rank. The official codes average (CE) or sum (KL); for sign steps this only matters where a
mean-reduced gradient would underflow.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F

Objective = Literal["ce", "cw", "kl"]
OBJECTIVES: tuple[str, ...] = get_args(Objective)


def cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels, reduction="sum")


def cw_margin_sum(logits: torch.Tensor, labels: torch.Tensor, kappa: float) -> torch.Tensor:
    """The CW loss used inside PGD ("CW-k(PGD)"): -clamp(z_y - max_{j != y} z_j + kappa, min=0).

    With kappa = 50 (the widely used CAT implementation) the clamp only binds once an example is
    misclassified by a margin of 50, i.e. practically never: the attack then ascends the plain margin.
    """
    true_logit = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    best_other = others.max(dim=1).values
    return -torch.clamp(true_logit - best_other + kappa, min=0).sum()


def kl_from_clean_sum(logits_adv: torch.Tensor, clean_probs: torch.Tensor) -> torch.Tensor:
    """sum_i KL(P_clean,i || P_adv,i): the TRADES attack objective (label-free)."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), clean_probs, reduction="sum")
