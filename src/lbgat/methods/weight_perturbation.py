"""Adversarial weight perturbation (Wu et al., NeurIPS 2020), the arithmetic of the official ``utils_awp``.

One step: the student's weights (BatchNorm buffers included) are copied into a proxy network; the proxy
takes one plain gradient step of size ``eta`` *up* the given loss; for every weight tensor of two or more
dimensions the move d = proxy - student is scaled layer-wise to the weight's norm,
v = ||w|| / (||d|| + 1e-20) * d; the student's weights become w + gamma * v. After the optimiser step,
:meth:`AdversarialWeightPerturbation.restore` subtracts gamma * v again (not a copy of w: the step taken at
the perturbed point stays). BatchNorm's statistics of the proxy's forward are discarded with the proxy.

Under torchrun the ascent is taken on the global batch: each rank's proxy gradients (of the mean over its share)
are combined into the gradient of the global batch's mean before the proxy steps, so every rank moves the same
proxy to the same point and perturbs by the same v, as one process on the whole batch would.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from ..runtime.collectives import global_mean_gradients

NORM_EPS = 1e-20  # the official EPS: a layer the proxy did not move gets a zero perturbation


def _plain(network: nn.Module) -> nn.Module:
    """The module itself under a torch.compile wrapper (its state and parameter names are the module's)."""
    return getattr(network, "_orig_mod", network)


class AdversarialWeightPerturbation:
    """The perturbation of one network; ``perturb`` then ``restore``, once per step."""

    def __init__(self) -> None:
        self.proxy: nn.Module | None = None
        self.applied: list[tuple[torch.Tensor, torch.Tensor]] = []  # (parameter, gamma * v) now added
        self.gamma = 0.0

    def directions(self, network: nn.Module, loss_of: Callable[[nn.Module], torch.Tensor],
                   eta: float, share: float = 1.0) -> dict[str, torch.Tensor]:
        """v per perturbed weight, by parameter name: one ascent step of ``loss_of`` on a proxy copy.
        ``loss_of`` is a mean over this process's examples, ``share`` their part of the global batch."""
        network = _plain(network)
        if self.proxy is None:
            self.proxy = copy.deepcopy(network)
            # A module compiled in place (nn.Module.compile) keeps its compiled call, bound to the original:
            # the copy would run the original's weights. The proxy runs eagerly.
            self.proxy._compiled_call_impl = None
        proxy = self.proxy
        proxy.load_state_dict(network.state_dict())
        proxy.train()
        trainable = [p for p in proxy.parameters() if p.requires_grad]
        gradients = global_mean_gradients(torch.autograd.grad(-loss_of(proxy), trainable, allow_unused=True), share)
        with torch.no_grad():
            for parameter, gradient in zip(trainable, gradients, strict=True):
                if gradient is not None:
                    parameter.add_(gradient, alpha=-eta)  # torch.optim.SGD(lr=eta) without momentum
        moved = proxy.state_dict()
        directions = {}
        for key, weight in network.state_dict().items():
            if weight.dim() <= 1 or "weight" not in key:
                continue
            change = moved[key] - weight
            directions[key] = weight.norm() / (change.norm() + NORM_EPS) * change
        return directions

    def perturb(self, network: nn.Module, directions: dict[str, torch.Tensor], gamma: float) -> None:
        if self.applied:
            raise RuntimeError("the previous weight perturbation was not restored (call Method.after_step())")
        self.gamma = gamma
        with torch.no_grad():
            for name, parameter in _plain(network).named_parameters():
                if name in directions:
                    shift = gamma * directions[name]
                    parameter.add_(shift)
                    self.applied.append((parameter, directions[name]))

    def restore(self) -> None:
        """Subtract gamma * v from each perturbed weight (a no-op when nothing is applied)."""
        with torch.no_grad():
            for parameter, direction in self.applied:
                parameter.add_(-1.0 * self.gamma * direction)
        self.applied = []
