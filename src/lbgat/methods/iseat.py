"""ISEAT (Li & Spratling, arXiv 2303.14077), as the official ``update()`` in ``src/utils/train.py``.

One step, all in train mode: the clean forward; its input gradient is the attack's first step; CE-PGD
(no random start by default); with gamma != 0 the weights are perturbed by AWP (one ascent step of the
plain CE on x' in a proxy); the loss is

    (1/B) sum_i [ CE(f_{w+gamma v}(x'_i), y_i) + lam * r_i / B * ||f_{w+gamma v}(x'_i) - f_w(x_i)||^2 ]

with r_i the rank (1 = least) of CE(f_{w+gamma v}(x'_i)) - CE(f_w(x_i)), detached. Under torchrun, B and the
ranks are those of the global batch and the proxy ascends the global batch's CE (lbgat.runtime.collectives),
so the processes train the model one process trains on the whole batch. Both logits get the
term's gradient: the clean logits are those of the unperturbed weights, and their gradient is added to
the weights' (the official code does it through a copy of the model, ``tmp_model``). The optimiser steps
at w + gamma v, and :meth:`after_step` subtracts gamma v. lam and gamma are per learning-rate stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..attacks.modes import model_mode
from ..attacks.pgd import start_noise
from ..data.loader import Batch
from ..errors import ConfigError
from ..runtime.collectives import over_global_batch
from ..runtime.rng import Stream
from .base import LossTerms, Method, MethodParams, TrainAttack
from .registry import register_method
from .weight_perturbation import AdversarialWeightPerturbation

if TYPE_CHECKING:
    from .plugin import Plugin


@dataclass(frozen=True)
class IseatParams(MethodParams):
    """lam and gamma: one value per learning-rate stage (stage k from the k-th of ``stage_epochs``; the
    last value holds for later stages), as the official --lam and -ag; awp_eta: the proxy's ascent step
    (--awp_eta); stage_epochs: the epochs where the stages begin (the official --annealing)."""

    lam: list[float] = field(default_factory=lambda: [0.0, 0.1])
    gamma: list[float] = field(default_factory=lambda: [7e-3])
    awp_eta: float = 0.01
    stage_epochs: list[int] = field(default_factory=lambda: [100, 150])

    def __post_init__(self) -> None:
        super().__post_init__()
        if list(self.stage_epochs) != sorted(self.stage_epochs):
            raise ConfigError(f"iseat.stage_epochs must be increasing, got {self.stage_epochs}")

    def stage(self, epoch: int) -> int:
        return sum(epoch >= start for start in self.stage_epochs)

    def at(self, values: list[float], epoch: int) -> float:
        """The value of a per-stage list in ``epoch`` (0 for an empty list, as the official code)."""
        if not values:
            return 0.0
        return values[min(self.stage(epoch), len(values) - 1)]


def rank_weights(vulnerability: torch.Tensor) -> torch.Tensor:
    """r_i / B with r_i the ascending rank of each example's vulnerability (1 = least vulnerable)."""
    size = vulnerability.shape[0]
    order = torch.topk(vulnerability, size, largest=False).indices
    ranks = torch.arange(1, size + 1, device=vulnerability.device, dtype=torch.float32) / size
    weights = torch.empty_like(ranks)
    weights[order] = ranks
    return weights


@register_method
class Iseat(Method[IseatParams]):
    """ISEAT: CE on x' at AWP-perturbed weights + lam * rank-weighted ||f_{w+gv}(x') - f_w(x)||^2."""

    name = "iseat"
    description = "ISEAT: CE(f_{w+gv}(x_adv)) + lam * rank-weighted ||f_{w+gv}(x_adv) - f_w(x)||^2 (AWP built in)"
    Params = IseatParams
    attack_objective = "ce"
    default_start = "none"
    default_bn_mode = "train"
    accepts_plugins = False

    def __init__(self, student: nn.Module, params: IseatParams, attack: TrainAttack | None,
                 teacher: nn.Module | None = None, plugins: Sequence[Plugin] = ()) -> None:
        super().__init__(student, params, attack, teacher, plugins)
        self.weights = AdversarialWeightPerturbation()

    def forward(self, batch: Batch) -> LossTerms:
        assert self.attack is not None
        x, y, size = batch.x, batch.y, len(batch)
        lam = self.params.at(self.params.lam, batch.epoch)
        gamma = self.params.at(self.params.gamma, batch.epoch)
        perturbed = gamma != 0
        noise = start_noise(x, self.attack.start, self.attack.eps, self.attack.start_std, batch.rng,
                            Stream.TRAIN_ATTACK_START, "Linf")
        clean = torch.clamp(x + noise, 0, 1).requires_grad_(True)
        delta = clean.detach() - x
        logits_clean = self.student(clean)
        weights_now = {name: p.detach().clone() for name, p in self.student.named_parameters()} \
            if perturbed and lam else None
        ce_clean = F.cross_entropy(logits_clean, y, reduction="none")
        first_gradient = torch.autograd.grad(ce_clean.mean(), clean, retain_graph=lam != 0 and not perturbed)[0]
        x_adv = self.pgd(x, y, delta, first_gradient if self.attack.bn_mode == "train" else None)
        if perturbed:
            directions = self.weights.directions(
                self.student, lambda proxy: F.cross_entropy(proxy(x_adv), y), self.params.awp_eta,
                share=size / batch.global_size)
            self.weights.perturb(self.student, directions, gamma)
        logits_adv = self.student(x_adv)
        ce_adv = F.cross_entropy(logits_adv, y, reduction="none")
        loss = torch.mean(ce_adv)
        terms: LossTerms = {"loss": loss, "ce_adv": loss}
        if lam != 0:
            if weights_now is not None:
                logits_clean = self.at_unperturbed_weights(clean, weights_now)
            smooth = ((logits_adv - logits_clean) ** 2).sum(dim=1)
            # Ranked over the global batch; each process weighs its own examples (its mean over them, as
            # every term: the trainer's share weighting makes the processes' average the global mean).
            vulnerability, mine = over_global_batch((ce_adv - ce_clean).detach())
            weighted = torch.sum(smooth * rank_weights(vulnerability)[mine])
            terms["loss"] = loss + weighted * lam / size
            terms["smoothness"] = weighted / size
        else:
            terms["smoothness"] = torch.zeros((), device=x.device)
        return terms

    def at_unperturbed_weights(self, inputs: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """The student at the weights ``w`` saved before the perturbation, in train mode, with its gradient
        flowing into the perturbed parameters as an addition (w + (p - p) is w exactly, d/dp is 1): the
        official code's copy of the model, whose gradients it adds to the model's. BatchNorm's statistics
        of this forward are not kept (the copy's were discarded)."""
        parameters = {name: weights[name] + (p - p.detach()) for name, p in self.student.named_parameters()}
        buffers = {name: b.clone() for name, b in self.student.named_buffers()}
        return functional_call(self.student, {**parameters, **buffers}, (inputs,))

    def pgd(self, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor,
            first_gradient: torch.Tensor | None) -> torch.Tensor:
        """CE-PGD in the official arithmetic (on the perturbation: delta + step sign(g), clipped to the
        ball, then x + delta clipped to [0, 1]); the first step may reuse the clean forward's gradient."""
        assert self.attack is not None
        eps, step = self.attack.eps, self.attack.step_size
        if self.attack.steps == 0:
            return torch.clamp(x + delta, 0, 1)
        with model_mode(self.student, self.attack.bn_mode):
            for index in range(self.attack.steps):
                if index == 0 and first_gradient is not None:
                    gradient = first_gradient
                else:
                    adv = torch.clamp(x + delta, 0, 1).requires_grad_(True)
                    gradient = torch.autograd.grad(F.cross_entropy(self.student(adv), y), adv)[0]
                # step * (+-1 or 0) is exact: delta + it, in one pass, rounds as delta + step * sign(g)
                delta = torch.add(delta, torch.sign(gradient), alpha=step).clamp_(-eps, eps)
                adv = torch.clamp(x + delta, 0, 1)
                delta = adv - x
        return adv.detach()

    def after_step(self) -> None:
        self.weights.restore()
