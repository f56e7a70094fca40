"""Independent re-implementations of the official training attacks, written from the spec, that the
library's attacks and methods are compared against."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def official_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, start: torch.Tensor, *,
                    eps: float, step_size: float, steps: int, objective: str) -> torch.Tensor:
    """TRADES/LBGAT ``trades_loss``/``lbgat_loss`` attack ("kl"; the clean prediction recomputed at every
    step, with gradients enabled) or the same loop on the mean CE ("ce"): eval mode, sign steps,
    min/max projection, clamp to [0, 1], train mode afterwards."""
    model.eval()
    x_adv = x + start
    for _ in range(steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            logits = model(x_adv)
            if objective == "kl":
                loss = F.kl_div(F.log_softmax(logits, dim=1), F.softmax(model(x), dim=1), reduction="sum")
            else:
                loss = F.cross_entropy(logits, y)
        grad = torch.autograd.grad(loss, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()
    return x_adv.detach()
