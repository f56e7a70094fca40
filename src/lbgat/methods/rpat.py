"""RPAT as a plug-in (Wang & Liu, ICCV 2025): the logits of the midpoint between x and x' pulled onto the
same mix of the logits at x and x', as in the official ``adv_train_ra`` / ``adv_trades_ra`` /
``mart_loss_ra``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import MethodParams
from .plugin import Regulariser, register_plugin
from .step import ADV, CLEAN, ForwardNeeds, StepView

MIDPOINT = "x_mid"  # RPAT's own forward, f(r x + (1 - r) x')


@dataclass(frozen=True)
class RPATParams(MethodParams):
    """lam: weight on the official code's scale (--lam, default 1.0; the paper's lambda is lam * a^2 (1 - a)^2
    with a = 1 - r, i.e. lam / 16 at r = 0.5: see :func:`paper_lambda`); r: the interpolation rate
    (--RA_ip_rate), x_mid = r x + (1 - r) x'; start_epoch: the term is active from this epoch (--RA_start)."""

    lam: float = 1.0
    r: float = 0.5
    start_epoch: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.r < 1.0:
            raise ConfigError(f"rpat.r must be in (0, 1) (the midpoint's position), got {self.r}")


def paper_lambda(code_lam: float, r: float) -> float:
    """The paper's lambda for the official code's ``--lam``: the code's MSE equals the paper's residual
    times a^2 (1 - a)^2, with a = 1 - r the midpoint's distance from x (methods.md section 11.1)."""
    a = 1.0 - r
    return code_lam * a * a * (1.0 - a) * (1.0 - a)


def rpat_mse(logits_mid: torch.Tensor, logits_clean: torch.Tensor, logits_adv: torch.Tensor, r: float) -> torch.Tensor:
    """MSE_mean(f(x_mid), r f(x) + (1 - r) f(x')), over all B x C entries; nothing detached."""
    return F.mse_loss(logits_mid, r * logits_clean + (1 - r) * logits_adv)


@register_plugin
class RPAT(Regulariser):
    """+ lam * MSE(f(r x + (1-r) x'), r f(x) + (1-r) f(x')). f(x') is the host's; f(x) the host's where it names
    one (PGD-AT makes f(x') only: then f(x_mid) and f(x) follow, the official order); f(x_mid) its own."""

    name = "rpat"
    description = "robust perception: lam * MSE(f(x_mid), r f(x) + (1-r) f(x_adv)), x_mid = r x + (1-r) x_adv"
    paper = ("Wang & Liu, Failure Cases Are Better Learned But Boundary Says Sorry: Facilitating Smooth Perception "
             "Change for Accuracy-Robustness Trade-Off in Adversarial Training, ICCV 2025 (arXiv 2508.02186)")
    Params = RPATParams
    params: RPATParams

    @classmethod
    def summary(cls, params: MethodParams) -> str:
        assert isinstance(params, RPATParams)
        return (f"rpat(lam={params.lam!r} on the official code's scale = {paper_lambda(params.lam, params.r):.6g} "
                f"on the paper's, r={params.r!r}, start_epoch={params.start_epoch})")

    @classmethod
    def forward_needs(cls, params: MethodParams) -> ForwardNeeds:
        return ForwardNeeds(host=frozenset({ADV}), host_or_own=frozenset({CLEAN}), own=frozenset({MIDPOINT}))

    def weight(self, epoch: int) -> float:
        return self.params.lam if epoch >= self.params.start_epoch else 0.0

    def term(self, step: StepView) -> torch.Tensor:
        r = self.params.r
        logits_adv = step.logits(ADV)
        logits_mid = step.own(MIDPOINT, r * step.batch.x + (1 - r) * step.x_adv).logits
        logits_clean = step.logits(CLEAN)
        return rpat_mse(logits_mid, logits_clean, logits_adv, r)
