"""Running white-box attacks over a dataset split and keeping per-example outcomes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from ..attacks import fgsm, model_mode, pgd
from ..data.loader import Batch, DeviceLoader
from ..rng import Stream
from .specs import AttackSpec


@dataclass
class AttackOutcome:
    """Per-example correctness under one attack, in dataset-index order of the evaluated examples."""

    spec: AttackSpec
    correct: torch.Tensor  # bool (N,)
    seconds: float = 0.0

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


def adversarial_examples(model: nn.Module, batch: Batch, spec: AttackSpec) -> torch.Tensor:
    """The inputs ``spec`` produces for ``batch`` (the clean images for ``clean``)."""
    if spec.kind == "clean":
        return batch.x
    if spec.kind == "fgsm":
        return fgsm(model, batch.x, batch.y, eps=spec.eps)
    return pgd(
        model, batch.x, batch.y, eps=spec.eps, step_size=spec.step_size, steps=spec.steps,
        objective="ce" if spec.kind == "pgd" else "cw", kappa=spec.kappa if spec.kappa is not None else 50.0,
        start="uniform" if spec.random_start else "none", rng=batch.rng, stream=Stream.EVAL_ATTACK_START,
    )


def run_suite(
    model: nn.Module, loader: DeviceLoader, specs: Sequence[AttackSpec], *, progress: bool = True,
    description: str = "eval",
) -> SuiteResult:
    """Evaluate ``model`` (in eval mode; its modes are restored) on every batch under every attack."""
    correct: dict[str, list[torch.Tensor]] = {spec.name: [] for spec in specs}
    seconds = dict.fromkeys(correct, 0.0)
    indices: list[torch.Tensor] = []
    started = time.perf_counter()
    with model_mode(model, "eval"):
        for batch in tqdm(loader.batches(0), total=len(loader), desc=description, disable=not progress,
                          dynamic_ncols=True, leave=False):
            indices.append(batch.index.cpu())
            for spec in specs:
                attack_started = time.perf_counter()
                inputs = adversarial_examples(model, batch, spec)
                with torch.no_grad():
                    predictions = model(inputs).argmax(dim=1)
                correct[spec.name].append((predictions == batch.y).cpu())
                seconds[spec.name] += time.perf_counter() - attack_started
    def flags(name: str) -> torch.Tensor:
        return torch.cat(correct[name]) if correct[name] else torch.zeros(0, dtype=torch.bool)

    outcomes = {spec.name: AttackOutcome(spec, flags(spec.name), seconds[spec.name]) for spec in specs}
    all_indices = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.int64)
    return SuiteResult(outcomes, all_indices, time.perf_counter() - started)
