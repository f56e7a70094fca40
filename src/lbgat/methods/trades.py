"""TRADES (Zhang et al., ICML 2019), as in the official ``trades_loss``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.loader import Batch
from .base import LossTerms, Method, MethodParams
from .registry import register_method
from .step import ADV, CLEAN, ForwardName, Forwards
from .underflow import softmax_with_limit


def kl_batchmean(logits_target: torch.Tensor, logits_input: torch.Tensor) -> torch.Tensor:
    """(1/B) sum_i KL(softmax(target_i) || softmax(input_i)); nothing detached. Where a target probability
    underflows to 0 its gradient is the finite limit (:mod:`lbgat.methods.underflow`), not NaN."""
    target = softmax_with_limit(logits_target, dim=1)
    summed = F.kl_div(F.log_softmax(logits_input, dim=1), target, reduction="sum")
    return summed / logits_target.shape[0]


@dataclass(frozen=True)
class TradesParams(MethodParams):
    """alpha: weight of the KL term. It is TRADES' beta (= 1/lambda) and the official --beta.
    adversarial_first: run the forwards as the official TRADES-AWP script does, f(x'), f(x), f(x), instead of
    TRADES' own f(x), f(x'), f(x); the loss and its gradients are the same, BatchNorm's running statistics
    see the batches in that order."""

    alpha: float = 6.0
    adversarial_first: bool = False


@register_method
class Trades(Method[TradesParams]):
    """L = CE(f(x), y) + alpha * (1/B) sum KL(P_f(x) || P_f(x')), x' = KL-PGD (label-free).

    Gradient flows through both f(x) and f(x'); x' is detached. As in the official code the clean
    forward runs twice in train mode (once for the CE, once for the KL target), so BatchNorm's
    running statistics see x, x', x each step.
    """

    name = "trades"
    description = "TRADES: CE(f(x), y) + alpha * KL(P_f(x) || P_f(x_adv)), x_adv = KL-PGD"
    Params = TradesParams
    attack_objective = "kl"
    default_start = "normal"

    @classmethod
    def named_forwards(cls, params: MethodParams) -> frozenset[ForwardName]:
        return frozenset({CLEAN, ADV})

    def host_terms(self, batch: Batch, x_adv: torch.Tensor, forwards: Forwards) -> LossTerms:
        """The first f(x) is the one named ``clean`` (a plug-in's f(x)), whichever order the forwards run in."""
        if self.params.adversarial_first:
            logits_adv = forwards.run(x_adv, ADV)
            kl = kl_batchmean(forwards.run(batch.x, CLEAN), logits_adv)
            ce = F.cross_entropy(forwards.run(batch.x), batch.y)
            return {"loss": ce + self.params.alpha * kl, "ce": ce, "kl": kl}
        return self.terms_in_trades_order(forwards, batch, x_adv)

    def terms_in_trades_order(self, forwards: Forwards, batch: Batch, x_adv: torch.Tensor) -> LossTerms:
        """TRADES' terms with the forwards of ``trades_loss``: f(x), f(x'), f(x)."""
        logits_clean = forwards.run(batch.x, CLEAN)
        ce = F.cross_entropy(logits_clean, batch.y)
        logits_adv = forwards.run(x_adv, ADV)
        kl = kl_batchmean(forwards.run(batch.x), logits_adv)
        return {"loss": ce + self.params.alpha * kl, "ce": ce, "kl": kl}

    def weight_ascent_loss(self, network: nn.Module, batch: Batch, x_adv: torch.Tensor) -> torch.Tensor:
        """AWP ascends the TRADES loss in TRADES-AWP's ``calc_awp`` order, f(x), f(x'), f(x), whatever the
        order of the step's own forwards."""
        return self.terms_in_trades_order(Forwards(network), batch, x_adv)["loss"]
