"""Softmax probabilities whose gradient is its finite limit where a probability underflows to 0.

A KL term KL(p || q) = sum p log p - p log q with a probability target p that carries a gradient
(TRADES, MART and LBGAT-TRADES do not detach it) has d/dp_j = log p_j + 1 - log q_j, which autograd
evaluates at p_j == 0 as -inf or NaN (0/0 in ``xlogy``'s backward). The softmax backward,
p * (g - sum_k p_k g_k), then computes 0 * inf for that entry and puts NaN in the whole row. In fp32
this happens once a logit gap exceeds about 104, while the loss itself is still finite.

The true gradient is finite: the softmax backward multiplies every upstream entry by p_j, and
p_j log p_j -> 0 as p_j -> 0, so entry j contributes nothing to the row in the limit. The hook below
computes exactly that limit by replacing the upstream gradient with 0 where p_j is exactly 0.
Where no probability is 0 it returns the gradient unchanged, so every number is bit for bit what
``F.softmax`` gives (a log-space KL, ``log_target=True``, would also be finite but changes the
gradients' last bits on ordinary batches: docs/methods.md, "Where a softmax underflows").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _zero_where_underflowed(probs: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    # Always applied, never "if any zero": a data-dependent branch would make the host wait for the device.
    return grad.masked_fill(probs == 0, 0.0)


def softmax_with_limit(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``F.softmax(logits, dim)``, whose backward takes the limit p log p -> 0 where a probability is 0."""
    probs = F.softmax(logits, dim=dim)
    if probs.requires_grad:
        # The detached alias shares the output's storage (softmax saves it for its backward anyway),
        # and does not make the tensor reference itself through its own hook.
        saved = probs.detach()
        probs.register_hook(lambda grad: _zero_where_underflowed(saved, grad))
    return probs
