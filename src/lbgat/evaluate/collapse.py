"""Has the model collapsed to one class? The share of its clean predictions that go to its most predicted
class, read by the evaluation's sanity check and by the trainer at every epoch.

Why this signal: it needs one clean forward pass and no labels to be meaningful, and it separates the
failure from an honestly weak model. A balanced C-class set puts about 1/C of an honest model's
predictions in each class (10% on CIFAR-10, 50% with two classes); a run that collapsed predicts one class
for nearly every input, so its clean and robust accuracies sit at that class's share of the labels (chance)
whatever the attack. Thresholds:

- **fail** (collapsed) at >= 90% of the predictions in one class: at most 10% of the inputs are told apart
  from the rest, and a constant model's "robust accuracy" is its class's share of the labels, not robustness;
- **warn** at more than halfway from balanced to one class, (1 + 1/C) / 2 (55% with ten classes, 75% with
  two): the model leans heavily on one class.

Neither is flagged when the true labels themselves give that class the flagged share (a data set that is
mostly one class), and fewer than ``MIN_EXAMPLES`` predictions give no verdict (one wrong prediction of one
example would otherwise read as a collapse).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..attacks import model_mode

COLLAPSE_SHARE = 0.9
MIN_EXAMPLES = 20
Level = Literal["pass", "warn", "fail", "skipped"]


@dataclass(frozen=True)
class PredictionShare:
    """How the predictions of ``n`` examples spread over ``num_classes`` classes."""

    n: int
    num_classes: int
    top_class: int  # the most predicted class (the lowest index among equals)
    share: float  # its share of the predictions
    label_share: float  # its share of the true labels of the same examples

    @property
    def warn_share(self) -> float:
        return (1 + 1 / max(self.num_classes, 1)) / 2

    @property
    def verdict(self) -> Level:
        if self.n < MIN_EXAMPLES:
            return "skipped"
        if self.share >= COLLAPSE_SHARE > self.label_share:
            return "fail"
        if self.share >= self.warn_share > self.label_share:
            return "warn"
        return "pass"

    @property
    def collapsed(self) -> bool:
        return self.verdict == "fail"

    def describe(self, where: str) -> str:
        """``97.0% of the clean predictions on 100 test images are class 3 (10.0% of their labels)``."""
        return (f"{100 * self.share:.1f}% of the clean predictions on {self.n} {where} are class {self.top_class} "
                f"({100 * self.label_share:.1f}% of their labels)")

    def to_dict(self) -> dict[str, float | int]:
        return {"n": self.n, "num_classes": self.num_classes, "top_class": self.top_class, "share": self.share,
                "label_share": self.label_share}


def prediction_share(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> PredictionShare:
    n = int(predictions.numel())
    if not n:
        return PredictionShare(0, num_classes, 0, 0.0, 0.0)
    counts = torch.bincount(predictions.flatten().cpu(), minlength=num_classes)
    top = int(counts.argmax())
    label_count = int((labels.flatten().cpu() == top).sum())
    return PredictionShare(n, num_classes, top, int(counts[top]) / n, label_count / n)


def predictions_of(model: nn.Module, batches: list[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """The model's clean predictions (eval mode, no gradients) over ``batches``, and its number of outputs."""
    found: list[torch.Tensor] = []
    num_classes = 0
    with model_mode(model, "eval"), torch.no_grad():
        for x in batches:
            logits = model(x)
            num_classes = int(logits.shape[1])
            found.append(logits.argmax(1))
    return (torch.cat(found) if found else torch.zeros(0, dtype=torch.int64)), num_classes
