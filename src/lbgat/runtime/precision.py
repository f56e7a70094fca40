"""Mixed precision: autocast around the method's forward (attack included), a gradient scaler for fp16.
Training uses all of it; evaluation under ``--precision`` bf16/fp16 uses its autocast.

Under autocast the networks run in bf16/fp16, but the attack's iterate, its sign step, the
projection onto the epsilon-ball and [0, 1], and the losses (autocast keeps softmax, cross-entropy
and KL in fp32) stay in fp32: the input is an fp32 leaf, so its gradient comes back in fp32.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from ..errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # the autocast precisions
PRECISIONS: tuple[str, ...] = ("fp32", *DTYPES)


def has_native_bf16(device: torch.device) -> bool:
    """bf16 in hardware on ``device`` itself (compute capability 8.0 or newer: Ampere, Hopper, ...).

    Not ``torch.cuda.is_bf16_supported()``: by default it also counts GPUs that only emulate bf16
    (V100, T4: many times slower than fp16 there), and it asks about the current device, not this one.
    """
    if torch.version.hip:
        return True
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" and device.type == "cuda" and not has_native_bf16(device):
        raise ConfigError(f"precision bf16 asked for, but {torch.cuda.get_device_name(device)} has no bf16 support "
                          "in hardware (compute capability 8.0 or newer); use fp16")


class Precision:
    """The autocast context of a training step and the backward/step that goes with it."""

    def __init__(self, precision: str, device: torch.device) -> None:
        check_precision(precision, device)
        self.name = precision
        self.device = device
        # Only fp16 needs loss scaling: its 5-bit exponent underflows small gradients; bf16 has fp32's range.
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def autocast(self) -> AbstractContextManager[Any]:
        """The step's autocast region, without autocast's weight-cast cache.

        Inside one training step the attack's clean forward runs under ``no_grad``; with the cache on,
        the low-precision copies of the weights cast there are reused by the later forwards of the
        same region, and those copies have no gradient history, so the weights behind them get no
        gradient (issue 13 item 2; PyTorch issues #112583, #142234 and #158232, fixed upstream by
        pytorch/pytorch#165068, merged in December 2025: 2.9 and every earlier release allowed by
        ``torch>=2.1`` have the bug; torch 2.13 does not show it on CPU). Without the
        cache every forward casts the weights anew: correct on every torch this package allows,
        at the price of one cast per forward, small next to a convolution's cost.
        """
        if self.name == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.name], cache_enabled=False)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimiser step; with fp16 the scaler skips it when a gradient overflowed and adapts its scale."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    @property
    def checks_gradients(self) -> bool:
        """False with fp16: overflowing scaled gradients are routine there, and the scaler handles them."""
        return self.scaler is None

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
