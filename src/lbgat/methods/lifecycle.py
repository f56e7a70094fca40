"""What a trainer tells a method or plug-in about the run, and what it offers them before the first step:
the hooks through which a trainer names no method or plug-in (issue 22 item 2)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class RunFacts:
    """What a method or plug-in may refuse a run for, beyond its own settings (``check_run``)."""

    compiled: bool = False  # --compile: the networks run through torch.compile
    processes: int = 1  # torchrun processes, each with its share of every batch


TrainedModels = Callable[[str, str], nn.Module]
"""What a plug-in's ``prepare`` loads a trained model with: (an lbgat checkpoint, or ARCH=PATH for a plain state
dict; the setting's name for messages) -> the model, checked against the run's dataset."""

