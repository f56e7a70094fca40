"""Running white-box (and transfer) attacks over a dataset split and keeping per-example outcomes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from ..attacks import fgsm, model_mode, pgd
from ..data.loader import Batch, DeviceLoader
from ..runtime.rng import Stream
from .specs import AttackSpec


@dataclass
class AttackOutcome:
    """Per-example correctness under one attack, in the order the examples were evaluated, plus
    the largest perturbation and box violation seen (for the consistency check)."""

    spec: AttackSpec
    correct: torch.Tensor  # bool (N,)
    seconds: float = 0.0
    max_perturbation: float = 0.0  # in the spec's norm, over all examples
    max_box_violation: float = 0.0  # how far any input left [0, 1]

    @property
    def count(self) -> int:
        return int(self.correct.sum())

    @property
    def total(self) -> int:
        return int(self.correct.numel())

    @property
    def accuracy(self) -> float:
        return self.count / self.total if self.total else float("nan")


@dataclass
class SuiteResult:
    outcomes: dict[str, AttackOutcome]
    indices: torch.Tensor  # dataset indices of the evaluated examples
    seconds: float = 0.0


def perturbation_size(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> float:
    delta = (x_adv - x).flatten(1)
    if not len(delta):
        return 0.0
    return float(delta.abs().amax() if norm == "Linf" else delta.norm(dim=1).amax())


def box_violation(x_adv: torch.Tensor) -> float:
    if not x_adv.numel():
        return 0.0
    return max(0.0, float(torch.maximum(-x_adv.amin(), x_adv.amax() - 1.0)))


def adversarial_examples(model: nn.Module, batch: Batch, spec: AttackSpec, source: nn.Module | None = None
                         ) -> torch.Tensor:
    """The inputs ``spec`` produces for ``batch`` (the clean images for ``clean``). A transfer attack
    is crafted on ``source`` exactly as the white-box PGD of the same settings would be on ``model``."""
    if spec.kind == "clean":
        return batch.x
    if spec.kind == "fgsm":
        return fgsm(model, batch.x, batch.y, eps=spec.eps, norm=spec.norm)
    if spec.kind == "transfer":
        if source is None:
            raise ValueError("a transfer attack needs a source model")
        model = source
    return pgd(
        model, batch.x, batch.y, eps=spec.eps, step_size=spec.step_size, steps=spec.steps,
        objective="cw" if spec.kind == "cw" else "ce", kappa=spec.kappa if spec.kappa is not None else 50.0,
        start="uniform" if spec.random_start else "none", rng=batch.rng, stream=Stream.EVAL_ATTACK_START,
        norm=spec.norm,
    )


def run_suite(
    model: nn.Module, loader: DeviceLoader, specs: Sequence[AttackSpec], *, progress: bool = True,
    description: str = "eval", source: nn.Module | None = None,
) -> SuiteResult:
    """Evaluate ``model`` (in eval mode; its modes are restored) on every batch under every attack."""
    outcomes = {spec.name: AttackOutcome(spec, torch.zeros(0, dtype=torch.bool)) for spec in specs}
    correct: dict[str, list[torch.Tensor]] = {spec.name: [] for spec in specs}
    indices: list[torch.Tensor] = []
    started = time.perf_counter()
    with ExitStack() as modes:
        for network in filter(None, (model, source)):
            modes.enter_context(model_mode(network, "eval"))
        for batch in tqdm(loader.batches(0), total=len(loader), desc=description, disable=not progress,
                          dynamic_ncols=True, leave=False):
            indices.append(batch.index.cpu())
            for spec in specs:
                outcome = outcomes[spec.name]
                attack_started = time.perf_counter()
                inputs = adversarial_examples(model, batch, spec, source)
                with torch.no_grad():
                    predictions = model(inputs).argmax(dim=1)
                correct[spec.name].append((predictions == batch.y).cpu())
                outcome.seconds += time.perf_counter() - attack_started
                outcome.max_perturbation = max(outcome.max_perturbation,
                                               perturbation_size(inputs, batch.x, spec.norm))
                outcome.max_box_violation = max(outcome.max_box_violation, box_violation(inputs))
    for name, flags in correct.items():
        if flags:
            outcomes[name].correct = torch.cat(flags)
    all_indices = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.int64)
    return SuiteResult(outcomes, all_indices, time.perf_counter() - started)
