"""The uncompiled forward of a network that ``torch.compile`` compiled, for the attacks.

A compiled region has one backward for all its inputs: ``torch.autograd.grad(loss, x_adv)`` through
a compiled network computes every weight gradient too and throws them away, about doubling the cost
of each attack step's backward. Run eagerly, autograd skips the weight gradients no one asked for.
So under ``--compile`` the training forward uses the compiled network and the attacks its eager
forward (same weights, same modules, same arithmetic up to the order of floating-point sums).
"""

from __future__ import annotations

import sys
from typing import Any

from torch import nn


class EagerForward(nn.Module):
    """Runs ``module`` without the compiled wrapper that ``nn.Module.compile()`` put in place.

    Holds ``module`` as its only child, so putting this in train/eval mode sets the module's modes.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        # _call_impl is what nn.Module.__call__ runs when no compiled version is set: hooks, then forward.
        return self.module._call_impl(*args, **kwargs)


def eager(module: nn.Module) -> nn.Module:
    """``module`` itself when it is not compiled; otherwise a view of it that runs uncompiled."""
    # torch.compile(module) returns a wrapper; without dynamo imported there can be none (and importing
    # it here would cost every uncompiled run a second).
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    if eval_frame is not None and isinstance(module, eval_frame.OptimizedModule):
        return module._orig_mod
    if getattr(module, "_compiled_call_impl", None) is not None:  # module.compile(): compiled in place
        return EagerForward(module)
    return module
