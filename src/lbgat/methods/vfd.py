"""VFD-Adv as a plug-in: a RECONSTRUCTION from the abstract of Cao et al., arXiv 2206.02158 (no official
code, no full text; methods.md section 9.4). Label results of runs that use it as such."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import Method, MethodParams
from .plugin import Regulariser, register_plugin
from .step import ForwardLog, StepView, penultimate, recording

LAYERS = ("penultimate", "logits")  # or the name of a module of the student (its output, flattened)
DISTANCES = ("mse", "cosine")
RECONSTRUCTION_NOTE = ("VFD-Adv here is a reconstruction from the paper's abstract (no official code or full "
                       "text): layer, distance and weights are guesses, not the paper's")


@dataclass(frozen=True)
class VFDParams(MethodParams):
    """checkpoint: the frozen, naturally trained teacher (an lbgat checkpoint, or ARCH=PATH for a plain state
    dict); layer: ``penultimate`` (the input of the last linear layer), ``logits`` or a module name of
    both networks; distance: ``mse`` (mean over batch and features) or ``cosine`` (1 - cos, batch mean);
    lam: the weight; clean: also align the student's clean features (the abstract aligns both)."""

    checkpoint: str = ""
    layer: str = "penultimate"
    distance: str = "mse"
    lam: float = 1.0
    clean: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.distance not in DISTANCES:
            raise ConfigError(f"vfd.distance must be one of {', '.join(DISTANCES)}, got {self.distance!r}")
        if not self.layer:
            raise ConfigError("vfd.layer must name a layer: penultimate, logits or a module name")


def feature_distance(student: torch.Tensor, teacher: torch.Tensor, distance: str) -> torch.Tensor:
    if distance == "mse":
        return F.mse_loss(student, teacher)
    return (1 - F.cosine_similarity(student, teacher, dim=1)).mean()


def feature_module(network: nn.Module, layer: str) -> tuple[nn.Module, bool] | None:
    """(module, its input is the feature) for ``layer``; None for the logits."""
    if layer == "logits":
        return None
    if layer == "penultimate":
        return penultimate(network), True
    modules = dict(network.named_modules())
    if layer not in modules:
        raise ConfigError(f"vfd.layer {layer!r} is not a module of {type(network).__name__}; use penultimate, "
                          f"logits or one of: {', '.join(name for name in modules if name)[:300]}")
    return modules[layer], False


@register_plugin
class VFD(Regulariser):
    """+ lam * [D(h_s(x'), h_t(x)) + D(h_s(x), h_t(x))], h_t from a frozen natural teacher in eval mode."""

    name = "vfd"
    description = "feature distillation from a frozen natural teacher: lam * D(h(x_adv), h_t(x)) [+ D(h(x), h_t(x))]"
    paper = "Cao et al., Vanilla Feature Distillation for Improving the Accuracy-Robustness Trade-Off, arXiv 2206.02158"
    reconstruction = True
    Params = VFDParams
    params: VFDParams

    def __init__(self, params: MethodParams, teacher: nn.Module | None = None) -> None:
        super().__init__(params)
        self.teacher: nn.Module | None = None
        if teacher is not None:
            self.set_teacher(teacher)

    def set_teacher(self, teacher: nn.Module) -> None:
        """The natural model to distil from: frozen (no gradients, BatchNorm in eval mode)."""
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
        self.teacher = teacher.eval()

    def attach(self, method: Method) -> None:
        if self.teacher is None:
            raise ConfigError("vfd needs its natural teacher: set vfd.checkpoint to a naturally trained model")
        feature_module(method.student, self.params.layer)
        feature_module(self.teacher, self.params.layer)

    def train(self, mode: bool = True) -> VFD:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: BatchNorm keeps its running statistics
        return self

    def watched_modules(self, student: nn.Module) -> list[tuple[nn.Module, bool]]:
        found = feature_module(student, self.params.layer)
        return [found] if found is not None else []

    def weight(self, epoch: int) -> float:
        return self.params.lam

    def teacher_features(self, x: torch.Tensor) -> torch.Tensor:
        assert self.teacher is not None
        found = feature_module(self.teacher, self.params.layer)
        log = ForwardLog()
        with torch.no_grad(), recording(self.teacher, log, [found] if found else []):
            self.teacher(x)
        entry = log.entries[-1]
        return entry.logits if found is None else entry.features[id(found[0])]

    def term(self, step: StepView) -> torch.Tensor:
        target = self.teacher_features(step.batch.x)
        found = feature_module(step.student, self.params.layer)

        def student_features(inputs: torch.Tensor) -> torch.Tensor:
            return step.logits(inputs) if found is None else step.features(inputs, found[0])

        features_adv = student_features(step.x_adv)
        if features_adv.shape != target.shape:
            raise ConfigError(f"vfd: the student's {self.params.layer} features are {tuple(features_adv.shape[1:])}, "
                              f"the teacher's {tuple(target.shape[1:])}; distil from a teacher of the student's "
                              "architecture or choose another vfd.layer")
        loss = feature_distance(features_adv, target, self.params.distance)
        if self.params.clean:
            loss = loss + feature_distance(student_features(step.batch.x), target, self.params.distance)
        return loss
