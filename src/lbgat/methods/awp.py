"""AWP as a plug-in: the host's step taken at adversarially perturbed weights (Wu et al., NeurIPS 2020)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.loader import Batch
from .base import Method, MethodParams
from .plugin import WeightPerturbation, register_plugin
from .weight_perturbation import AdversarialWeightPerturbation


@dataclass(frozen=True)
class AWPParams(MethodParams):
    """gamma: size of the perturbation relative to each layer's weight norm (official --awp-gamma: 0.01 for
    AT, 0.005 for TRADES); eta: the proxy's ascent step (0.01 in AT_AWP; TRADES_AWP uses its --lr, 0.1);
    warmup_epochs: epochs trained without the perturbation first (--awp-warmup: 0 for AT, 10 for TRADES)."""

    gamma: float = 0.01
    eta: float = 0.01
    warmup_epochs: int = 0



@register_plugin
class AWP(WeightPerturbation):
    """Before the host's loss: one ascent step of the host's own loss on a proxy copy of the student gives a
    direction per weight layer, scaled to the layer's norm; the loss and the optimiser step are taken at
    w + gamma * v; then gamma * v is subtracted. The host's attack runs before, at w."""

    name = "awp"
    description = "adversarial weight perturbation: the host's step at w + gamma*v, v one ascent step of its loss"
    paper = "Wu, Xia & Wang, Adversarial Weight Perturbation Helps Robust Generalization, NeurIPS 2020"
    Params = AWPParams
    params: AWPParams

    def __init__(self, params: MethodParams) -> None:
        super().__init__(params)
        self.weights = AdversarialWeightPerturbation()

    def perturb(self, method: Method, batch: Batch, x_adv: torch.Tensor) -> None:
        if batch.epoch < self.params.warmup_epochs or self.params.gamma == 0:
            return
        directions = self.weights.directions(
            method.student, lambda proxy: method.weight_ascent_loss(proxy, batch, x_adv), self.params.eta,
            share=len(batch) / batch.global_size)
        self.weights.perturb(method.student, directions, self.params.gamma)

    def restore(self) -> None:
        self.weights.restore()
