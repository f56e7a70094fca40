"""PGD adversarial training (Madry et al., ICLR 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.loader import Batch
from .base import LossTerms, Method, MethodParams, NoParams
from .registry import register_method
from .step import ADV, ForwardName, Forwards


@register_method
class PGDAT(Method[NoParams]):
    """min E[CE(f(x'), y)] with x' = CE-PGD on f, detached; only adversarial inputs are used.

    Defaults follow the TRADES/LBGAT pipeline (eps 0.031, 10 steps of 0.007, attack in eval mode);
    the start is uniform in the eps-ball (Madry's random start). Madry's original setting
    (8/255, 2/255, attack in train mode) is the recipe ``configs/recipes/madry-cifar10.yaml``.
    """

    name = "pgd-at"
    description = "PGD adversarial training: CE(f(x_adv), y), x_adv = CE-PGD"
    attack_objective = "ce"

    @classmethod
    def named_forwards(cls, params: MethodParams) -> frozenset[ForwardName]:
        return frozenset({ADV})

    def host_terms(self, batch: Batch, x_adv: torch.Tensor, forwards: Forwards) -> LossTerms:
        ce_adv = F.cross_entropy(forwards.run(x_adv, ADV), batch.y)
        return {"loss": ce_adv, "ce_adv": ce_adv}
