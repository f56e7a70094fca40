"""L-infinity PGD (sign steps, projection onto the epsilon-ball and [0, 1]) and FGSM."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..rng import ExampleRNG, Stream
from .modes import BNMode, model_mode
from .objectives import OBJECTIVES, Objective, cross_entropy_sum, cw_margin_sum, kl_from_clean_sum

Start = Literal["uniform", "normal", "none"]
STARTS: tuple[str, ...] = ("uniform", "normal", "none")


def _start_noise(
    x: torch.Tensor, start: Start, eps: float, start_std: float, rng: ExampleRNG | None, stream: int
) -> torch.Tensor:
    if start == "none":
        return torch.zeros_like(x)
    shape = tuple(x.shape[1:])
    if start == "uniform":
        unit = rng.uniform(stream, shape) if rng is not None else torch.rand_like(x)
        return (unit.to(x.dtype) * 2.0 - 1.0) * eps
    noise = rng.normal(stream, shape) if rng is not None else torch.randn_like(x)
    return noise.to(x.dtype) * start_std


def _check(eps: float, step_size: float, steps: int, objective: str, start: str) -> None:
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if step_size < 0:
        raise ValueError(f"step_size must be >= 0, got {step_size}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if start not in STARTS:
        raise ValueError(f"start must be one of {STARTS}, got {start!r}")


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    *,
    eps: float,
    step_size: float,
    steps: int,
    objective: Objective = "ce",
    start: Start = "uniform",
    start_std: float = 0.001,
    kappa: float = 50.0,
    rng: ExampleRNG | None = None,
    stream: int = Stream.EVAL_ATTACK_START,
    bn_mode: BNMode = "eval",
) -> torch.Tensor:
    """L-infinity projected gradient ascent on ``objective``; returns the final iterate, detached.

    Args:
        model: maps images in [0, 1] of shape (B, C, H, W) to logits (B, K).
        x: clean images in [0, 1]. y: labels (B,), unused by the label-free ``"kl"`` objective.
        eps, step_size, steps: radius, sign-step size and number of steps.
        objective: ``"ce"`` (cross-entropy), ``"cw"`` (CW margin with ``kappa``) or ``"kl"``
            (TRADES: KL between the clean and the adversarial prediction).
        start: ``"uniform"`` x + U(-eps, eps) (PGD-20 of TRADES' evaluation), ``"normal"``
            x + start_std * N(0, I) (the TRADES/LBGAT training attack) or ``"none"``. As in the
            official code the start is not clipped to [0, 1] before the first step.
        rng: per-example randomness (see :mod:`lbgat.rng`); None uses torch's global generator.
        bn_mode: mode the model runs in during the attack; the caller's modes are restored.

    Only input gradients are computed (``torch.autograd.grad`` w.r.t. the input), and the clean
    prediction the KL objective compares against is computed once, not at every step.
    """
    _check(eps, step_size, steps, objective, start)
    if objective != "kl" and y is None:
        raise ValueError(f"objective {objective!r} needs labels")
    x = x.detach()
    lower, upper = x - eps, x + eps
    x_adv = x + _start_noise(x, start, eps, start_std, rng, stream)
    with model_mode(model, bn_mode):
        clean_probs = None
        if objective == "kl":
            with torch.no_grad():
                clean_probs = F.softmax(model(x), dim=1)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                logits = model(x_adv)
                if objective == "ce":
                    loss = cross_entropy_sum(logits, y)
                elif objective == "cw":
                    loss = cw_margin_sum(logits, y, kappa)
                else:
                    loss = kl_from_clean_sum(logits, clean_probs)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + step_size * grad.sign()
            x_adv = torch.minimum(torch.maximum(x_adv, lower), upper).clamp_(0.0, 1.0)
    if steps == 0:
        x_adv = torch.minimum(torch.maximum(x_adv, lower), upper).clamp_(0.0, 1.0)
    return x_adv.detach()


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, bn_mode: BNMode = "eval") -> torch.Tensor:
    """Single step of size eps along sign(grad CE) from the clean image, clipped to [0, 1]."""
    return pgd(model, x, y, eps=eps, step_size=eps, steps=1, objective="ce", start="none", bn_mode=bn_mode)
