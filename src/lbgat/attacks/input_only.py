"""The network as the attacks call it: a forward whose backward gives the input's gradient only.

An attack needs the gradient of its objective with respect to the input, never the weights'. Eager
autograd skips gradients nobody asked for, so an uncompiled network is used as it is (its arithmetic
stays bit for bit what it was). A network that ``torch.compile`` compiled is different: a compiled
region has one backward for everything of its inputs that requires a gradient, so
``torch.autograd.grad(loss, x_adv)`` through it would compute every weight gradient too and throw
them away. Called with its weights set not to require gradients, the compiled network traces (once)
a second graph whose backward gives the input's gradient only: the attack keeps compile's fused
kernels and pays for no weight gradient. On an H200 (WRN-34-10 + ResNet-18 teacher, bf16,
channels-last, batch 128) that made the whole LBGAT+TRADES step 1.39x faster than the eager forward
and 1.34x faster than the compiled network with its weights' gradients (docs/performance.md).
"""

from __future__ import annotations

import sys
from typing import Any

from torch import nn


def is_compiled(module: nn.Module) -> bool:
    """``module.compile()`` (in place, as ``--compile`` does) or a ``torch.compile(module)`` wrapper."""
    if getattr(module, "_compiled_call_impl", None) is not None:
        return True
    # Without dynamo imported there can be no wrapper (and importing it would cost every uncompiled run a second).
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return eval_frame is not None and isinstance(module, eval_frame.OptimizedModule)


class FrozenWeights(nn.Module):
    """Calls ``network`` with its trainable parameters set not to require gradients for the forward.

    The autograd graph is fixed when the forward runs, so the flags are back before any backward (and
    before the training forwards that follow). Holds ``network`` as its only child, so putting this in
    train/eval mode sets the network's modes.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        trained = [parameter for parameter in self.network.parameters() if parameter.requires_grad]
        for parameter in trained:
            parameter.requires_grad_(False)
        try:
            return self.network(*args, **kwargs)
        finally:
            for parameter in trained:
                parameter.requires_grad_(True)


def input_only(module: nn.Module) -> nn.Module:
    """``module`` itself when it is not compiled; else the compiled module with frozen weights."""
    return FrozenWeights(module) if is_compiled(module) else module
