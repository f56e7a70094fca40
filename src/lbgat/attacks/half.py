"""Input gradients that survive an fp16 backward (issue 13 item 1).

Under fp16 autocast the backward through the network runs in fp16, whose smallest subnormal is
6e-8. The gradient of an attack objective with respect to the logits of a confidently classified
example is tiny (about exp(-margin): 2e-9 at a logit margin of 20), so it underflows to exactly 0
on its way to the input and ``sign(0)`` makes no step. The training loss has a GradScaler for
this; an attack's input gradient does not pass through it.

:func:`scaled_input_gradients` wraps a forward so that, in the backward, each example's gradient
at the logits is multiplied by a power of two that brings its largest entry to about
:data:`TARGET` (2**8), and the input gradient is divided by the same power of two on the way out,
in fp32. Multiplying by a power of two is exact, so the input gradient keeps its value (up to
fp16 rounding of the backward itself) and its sign; nothing underflows that fp32 would keep.

Why per example and why 2**8: examples of one batch need very different scales (a misclassified
example has logit gradients near 1, a confident one near 1e-9), so one batch-wide factor cannot
serve both; in eval mode the examples of a batch do not interact, so scaling each one's objective
is exact. 2**8 keeps the scaled logit gradient 256 times below fp16's maximum (65504), as much
headroom as a GradScaler at its initial 2**16 gives a batch of 256 examples on its mean loss, and
lifts every per-pixel input gradient down to 2**-32 of the largest logit gradient out of the
underflow range. When BatchNorm runs in train mode the examples interact, so one factor is used
for the whole batch (that of the example with the largest gradient), which still lifts a batch
whose gradients are all tiny. Only gradients with respect to the input are right: weight
gradients computed through the wrapper are scaled. The fp32 and bf16 paths never use this.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

TARGET_EXPONENT = 8  # the largest scaled logit gradient of an example lies in [2**7, 2**8)
MAX_SHIFT = 100  # fp32 holds 2**127: a shift past this would overflow the gradient itself


def under_fp16_autocast(device_type: str) -> bool:
    """True inside a float16 autocast region for ``device_type``."""
    try:
        return torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16
    except (TypeError, AttributeError):  # torch < 2.4: one function per device type
        if device_type == "cuda":
            return torch.is_autocast_enabled() and torch.get_autocast_gpu_dtype() == torch.float16
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled() and torch.get_autocast_cpu_dtype() == torch.float16
        return False


class _Shifts:
    """The per-example power-of-two exponents chosen at the logits, read back at the input."""

    exponents: torch.Tensor | None = None


def batch_coupled(model: nn.Module) -> bool:
    """Whether examples of a batch influence each other's outputs (BatchNorm in train mode)."""
    return any(isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training
               for module in model.modules())


class _UnscaleAtInput(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, shifts: _Shifts) -> torch.Tensor:
        ctx.shifts = shifts
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        exponents = ctx.shifts.exponents
        if exponents is None:  # the logits were not on the path of this gradient
            return grad, None
        exponents = exponents.reshape(-1, *([1] * (grad.dim() - 1)))
        return torch.ldexp(grad.float(), -exponents).to(grad.dtype), None


class _ScaleAtLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, shifts: _Shifts, per_example: bool) -> torch.Tensor:
        ctx.shifts, ctx.per_example = shifts, per_example
        return logits.view_as(logits)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        largest = grad.detach().float().abs().flatten(1).amax(dim=1)
        # frexp: largest = mantissa * 2**exponent with mantissa in [0.5, 1); a zero gradient gives 0.
        _, exponent = torch.frexp(largest)
        shift = (TARGET_EXPONENT - exponent).clamp(-MAX_SHIFT, MAX_SHIFT)
        shift = torch.where(largest > 0, shift, torch.zeros_like(shift))
        if not ctx.per_example and len(shift):
            shift = shift.min().expand_as(shift)
        ctx.shifts.exponents = shift
        return torch.ldexp(grad.float(), shift.reshape(-1, *([1] * (grad.dim() - 1)))).to(grad.dtype), None, None


def scaled_input_gradients(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
                           per_example: bool) -> torch.Tensor:
    """``model(x)`` as fp32 logits, with a backward whose gradient with respect to ``x`` is computed
    at a scale where fp16 does not underflow, then unscaled (see the module docstring).

    ``per_example``: scale each example on its own; only right when the examples do not interact
    (``not batch_coupled(network)``), else one factor for the batch.
    """
    shifts = _Shifts()
    # The scaling sits on fp32 logits: a gradient arriving at fp16 logits would already have underflowed.
    logits = model(_UnscaleAtInput.apply(x, shifts)).float()
    return _ScaleAtLogits.apply(logits, shifts, per_example)
