"""PGD in L-infinity (sign steps) and L2 (normalised-gradient steps), with projection onto the
epsilon-ball and [0, 1] after every step; FGSM / FGM as its one-step case.

Two official codes round differently from lbgat's default, and each is offered as an option so that a
recipe reproducing it takes its exact steps (docs/reproduction.md): AT_AWP and advertorch clip the uniform
start to [0, 1] (``start="uniform-clipped"``), and AT_AWP keeps the perturbation delta between steps
rather than x' (``iterate="delta"``; :func:`_delta_pgd`)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime.compilation import compile_options
from ..runtime.rng import ExampleRNG, Stream
from .half import batch_coupled, scaled_input_gradients, under_fp16_autocast
from .modes import BNMode, model_mode
from .objectives import OBJECTIVES, Objective, cross_entropy_sum, cw_margin_sum, kl_from_clean_sum

Start = Literal["uniform", "uniform-clipped", "normal", "none"]
STARTS: tuple[str, ...] = get_args(Start)
Norm = Literal["Linf", "L2"]
NORMS: tuple[str, ...] = get_args(Norm)
# What the attack carries from one step to the next: the iterate x' (lbgat, TRADES, MART), or the
# perturbation delta with x' = x + delta (AT_AWP); the two differ by one float32 rounding per step.
Iterate = Literal["x", "delta"]
ITERATES: tuple[str, ...] = get_args(Iterate)


def _per_example_l2(tensor: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each example, shaped (B, 1, 1, ...) to broadcast against the batch."""
    return tensor.flatten(1).norm(dim=1).reshape(-1, *([1] * (tensor.dim() - 1)))


def start_noise(
    x: torch.Tensor, start: Start, eps: float, start_std: float, rng: ExampleRNG | None, stream: int, norm: Norm
) -> torch.Tensor:
    """The start's offset from x (``"uniform-clipped"`` draws as ``"uniform"``: the caller clips x + noise)."""
    if start == "none":
        return torch.zeros_like(x)
    shape = tuple(x.shape[1:])
    # In place on the fresh draw: the same operations, without a new tensor for each.
    if start == "normal":
        noise = rng.normal(stream, shape) if rng is not None else torch.randn_like(x)
        return noise.to(x.dtype).mul_(start_std)
    if norm == "Linf":
        unit = rng.uniform(stream, shape) if rng is not None else torch.rand_like(x)
        return unit.to(x.dtype).mul_(2.0).sub_(1.0).mul_(eps)
    # L2 "uniform" start: a uniformly random direction at a radius drawn uniformly from [0, eps].
    direction = rng.normal(stream, shape) if rng is not None else torch.randn_like(x)
    radius = rng.uniform(Stream.L2_START_RADIUS) if rng is not None else torch.rand(x.shape[0], device=x.device)
    radius = radius.to(x.dtype).reshape(-1, *([1] * len(shape)))
    return direction.to(x.dtype) / _per_example_l2(direction).clamp_min(1e-12) * radius * eps


class _Projection:
    """Onto the eps-ball around x, then into [0, 1] (which keeps it in the ball)."""

    def __init__(self, x: torch.Tensor, eps: float, norm: Norm) -> None:
        self.x, self.eps, self.norm = x, eps, norm
        if norm == "Linf":  # computed once: this runs at every attack step
            self.lower, self.upper = x - eps, x + eps

    def __call__(self, x_adv: torch.Tensor) -> torch.Tensor:
        if self.norm == "Linf":  # clamp to tensor bounds: min(max(x', x - eps), x + eps) in one pass
            return torch.clamp(x_adv, self.lower, self.upper).clamp_(0.0, 1.0)
        delta = x_adv - self.x
        scale = (self.eps / _per_example_l2(delta).clamp_min(1e-12)).clamp(max=1.0)
        return (self.x + delta * scale).clamp_(0.0, 1.0)


def _linf_update(x_adv: torch.Tensor, grad: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                 step_size: torch.Tensor) -> torch.Tensor:
    """One L-infinity step and its projection, written out for torch.compile to fuse into one kernel."""
    return torch.minimum(torch.maximum(x_adv + step_size * grad.sign(), lower), upper).clamp(0.0, 1.0)


_compiled_linf_updates: dict[str, Callable[..., torch.Tensor]] = {}


def compiled_linf_update(mode: str = "default") -> Callable[..., torch.Tensor]:
    """The fused step, compiled on first use in torch.compile's ``mode`` (lbgat.runtime.compilation); dynamic
    shapes: a last, smaller batch does not recompile (under CUDA graphs it records a graph of its own)."""
    if mode not in _compiled_linf_updates:
        _compiled_linf_updates[mode] = torch.compile(_linf_update, dynamic=True, **compile_options(mode))
    return _compiled_linf_updates[mode]


def _ascend(x_adv: torch.Tensor, grad: torch.Tensor, step_size: float, norm: Norm) -> torch.Tensor:
    """x' + step_size * sign(g) (L-inf) or x' + step_size * g / ||g|| (L2), before the projection."""
    if norm == "Linf":
        # One pass: step_size * (+-1 or 0) is exact, so x' + that is rounded once either way.
        return torch.add(x_adv, grad.sign(), alpha=step_size)
    return x_adv + step_size * grad / _per_example_l2(grad).clamp_min(1e-12)


def _check(eps: float, step_size: float, steps: int, objective: str, start: str, norm: str, iterate: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if iterate not in ITERATES:
        raise ValueError(f"iterate must be one of {ITERATES}, got {iterate!r}")
    if iterate == "delta" and norm != "Linf":
        raise ValueError("iterate 'delta' (AT_AWP's arithmetic) is L-infinity only")
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


def _delta_pgd(x: torch.Tensor, noise: torch.Tensor, start: Start, gradient: Callable[[torch.Tensor], torch.Tensor],
               eps: float, step_size: float, steps: int) -> torch.Tensor:
    """L-infinity PGD on the perturbation, in AT_AWP's ``attack_pgd`` arithmetic: delta + a sign(g) clipped to
    [-eps, eps], then to [-x, 1 - x] (``max(min(delta, 1 - x), 0 - x)``); the model sees x + delta, and the
    result is clip(x + delta, 0, 1). The same real numbers as the x' iterate, rounded once per step
    elsewhere: where BatchNorm runs in train mode during the attack, that rounding flips the sign of
    near-zero input gradients and the two attacks part by whole steps."""
    upper, lower = 1.0 - x, 0.0 - x
    # max(min(delta, 1 - x), -x) is clamp(delta, -x, 1 - x) (the bounds never cross), in one pass.
    delta = torch.clamp(noise, lower, upper) if start == "uniform-clipped" else noise
    for _ in range(steps):
        grad = gradient(x + delta)  # d/d(x + delta) is d/d delta: the official gradient, bit for bit
        delta = torch.add(delta, torch.sign(grad), alpha=step_size).clamp_(min=-eps, max=eps)
        delta = torch.clamp(delta, lower, upper)
    if steps == 0:
        delta = torch.clamp(torch.clamp(delta, min=-eps, max=eps), lower, upper)
    return torch.clamp(x + delta, min=0.0, max=1.0)


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
    norm: Norm = "Linf",
    iterate: Iterate = "x",
    compiled: bool = False,
    compile_mode: str = "default",
) -> torch.Tensor:
    """Projected gradient ascent on ``objective``; returns the final iterate, detached.

    Args:
        model: maps images in [0, 1] of shape (B, C, H, W) to logits (B, K).
        x: clean images in [0, 1]. y: labels (B,), unused by the label-free ``"kl"`` objective.
        eps, step_size, steps: radius, step size and number of steps.
        norm: ``"Linf"`` (sign steps) or ``"L2"`` (steps along the L2-normalised gradient; the
            ``"uniform"`` start is then a random direction at a radius uniform in [0, eps]).
        objective: ``"ce"`` (cross-entropy), ``"cw"`` (CW margin with ``kappa``) or ``"kl"``
            (TRADES: KL between the clean and the adversarial prediction).
        start: ``"uniform"`` x + U(-eps, eps) (PGD-20 of TRADES' evaluation), ``"uniform-clipped"`` the
            same clipped to [0, 1] (AT_AWP, advertorch), ``"normal"`` x + start_std * N(0, I) (the
            TRADES/LBGAT training attack) or ``"none"``. As in the official codes, only
            ``"uniform-clipped"`` is clipped before the first step; the first projection clips the others.
        iterate: ``"x"`` keeps x' between steps (x' + a sign(g), projected; TRADES, MART, Madry) and
            ``"delta"`` keeps the perturbation (AT_AWP; L-infinity only; see :func:`_delta_pgd`).
        rng: per-example randomness (see :mod:`lbgat.runtime.rng`); None uses torch's global generator.
        bn_mode: mode the model runs in during the attack; the caller's modes are restored.
        compiled: L-infinity with ``iterate="x"`` only: run the step and projection as one
            torch.compile'd kernel (same arithmetic, in the iterate's dtype, fp32), compiled in
            torch.compile's ``compile_mode`` (lbgat.runtime.compilation).

    Only input gradients are computed (``torch.autograd.grad`` w.r.t. the input), and the clean
    prediction the KL objective compares against is computed once, not at every step.

    Under fp16 autocast the objective's backward runs at a per-example power-of-two scale
    (:mod:`lbgat.attacks.half`), so gradients that would underflow fp16 still give a step; the
    fp32 and bf16 paths are untouched.
    """
    _check(eps, step_size, steps, objective, start, norm, iterate)
    if objective != "kl" and y is None:
        raise ValueError(f"objective {objective!r} needs labels")
    x = x.detach()
    project = _Projection(x, eps, norm)
    noise = start_noise(x, start, eps, start_std, rng, stream, norm)
    update, step_tensor = None, None
    if compiled and norm == "Linf" and iterate == "x":
        # The step size as a tensor: a Python float would be baked into the compiled code, and the
        # eps warm-up changes it at every training step. Filled on the device: torch.tensor() would copy
        # it from the host and wait for the device.
        update = compiled_linf_update(compile_mode)
        step_tensor = torch.full((), step_size, dtype=x.dtype, device=x.device)
    with model_mode(model, bn_mode):
        forward: Callable[[torch.Tensor], torch.Tensor] = model
        if under_fp16_autocast(x.device.type):  # only here: the fp32 and bf16 arithmetic stays as it was
            forward = partial(scaled_input_gradients, model, per_example=not batch_coupled(model))
        clean_probs = None
        if objective == "kl":
            with torch.no_grad():
                clean_probs = F.softmax(model(x), dim=1)

        def gradient(x_adv: torch.Tensor) -> torch.Tensor:
            x_adv = x_adv.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = forward(x_adv)
                if objective == "ce":
                    loss = cross_entropy_sum(logits, y)
                elif objective == "cw":
                    loss = cw_margin_sum(logits, y, kappa)
                else:
                    loss = kl_from_clean_sum(logits, clean_probs)
            return torch.autograd.grad(loss, x_adv)[0]

        if iterate == "delta":
            return _delta_pgd(x, noise, start, gradient, eps, step_size, steps).detach()
        x_adv = x + noise
        if start == "uniform-clipped":
            x_adv = x_adv.clamp(0.0, 1.0)
        for _ in range(steps):
            grad = gradient(x_adv)
            if update is not None:
                x_adv = update(x_adv.detach(), grad, project.lower, project.upper, step_tensor)
            else:
                x_adv = project(_ascend(x_adv.detach(), grad, step_size, norm))
    if steps == 0:
        x_adv = project(x_adv)
    return x_adv.detach()


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, bn_mode: BNMode = "eval",
         norm: Norm = "Linf") -> torch.Tensor:
    """One step of size eps from the clean image along sign(grad CE) (L-inf; FGSM) or the
    L2-normalised gradient (L2; FGM), clipped to [0, 1]."""
    return pgd(model, x, y, eps=eps, step_size=eps, steps=1, objective="ce", start="none", bn_mode=bn_mode, norm=norm)
