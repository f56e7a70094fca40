"""VFD-Adv as a plug-in: a RECONSTRUCTION from the abstract of Cao et al., arXiv 2206.02158 (no official
code, no full text; methods.md section 9.4). Label results of runs that use it as such."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import Method, MethodParams
from .lifecycle import RunFacts, TrainedModels
from .plugin import Regulariser, register_plugin
from .step import ADV, CLEAN, Forward, ForwardNeeds, Forwards, StepView, Tap

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


def penultimate(model: nn.Module) -> nn.Module:
    """The model's last linear layer: its input is the penultimate feature (after global pooling)."""
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear layer to take the penultimate feature from")
    return linears[-1]


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


class FeatureTap:
    """The feature at one inner layer in one forward of a network, flattened per example. The models hand out
    no inner features, so a hook on that layer reads it, held only while :meth:`reading` is open."""

    def __init__(self, layer: str) -> None:
        self.layer = layer

    @contextmanager
    def reading(self, network: nn.Module) -> Iterator[Callable[[], torch.Tensor]]:
        found = feature_module(network, self.layer)
        assert found is not None, "the logits need no tap"
        module, takes_input = found
        kept: list[torch.Tensor] = []

        def before(hooked: nn.Module, args: tuple[Any, ...]) -> None:
            kept.append(args[0].flatten(1))

        def after(hooked: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            kept.append(output.flatten(1))

        handle = module.register_forward_pre_hook(before) if takes_input else module.register_forward_hook(after)
        try:
            yield lambda: kept[-1]
        finally:
            handle.remove()


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
        self.tap = None if self.params.layer == "logits" else FeatureTap(self.params.layer)
        self.teacher: nn.Module | None = None
        if teacher is not None:
            self.set_teacher(teacher)

    def set_teacher(self, teacher: nn.Module) -> None:
        """The natural model to distil from: frozen (no gradients, BatchNorm in eval mode)."""
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
        self.teacher = teacher.eval()

    @classmethod
    def check_run(cls, params: MethodParams, run: RunFacts) -> None:
        assert isinstance(params, VFDParams)
        if run.compiled:
            raise ConfigError("vfd reads the student's features through a hook on one layer, which a compiled student "
                              "does not run; drop --compile")
        if not params.checkpoint:
            raise ConfigError("vfd distils from a naturally trained model: set --set method.vfd.checkpoint=PATH "
                              "(an lbgat checkpoint, e.g. a run of --method natural)")

    def prepare(self, models: TrainedModels | None) -> None:
        if self.teacher is None and models is not None:
            self.set_teacher(models(self.params.checkpoint, "vfd.checkpoint"))

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

    @classmethod
    def forward_needs(cls, params: MethodParams) -> ForwardNeeds:
        assert isinstance(params, VFDParams)
        return ForwardNeeds(host=frozenset({ADV}), host_or_own=frozenset({CLEAN}) if params.clean else frozenset())

    def taps(self) -> Sequence[Tap]:
        return () if self.tap is None else (self.tap,)

    def weight(self, epoch: int) -> float:
        return self.params.lam

    def features(self, forward: Forward) -> torch.Tensor:
        return forward.logits if self.tap is None else forward.readings[self.tap]

    def teacher_features(self, x: torch.Tensor) -> torch.Tensor:
        assert self.teacher is not None
        with torch.no_grad():
            return self.features(Forwards(self.teacher, self.taps()).make(x))

    def term(self, step: StepView) -> torch.Tensor:
        target = self.teacher_features(step.batch.x)
        features_adv = self.features(step.forward(ADV))
        if features_adv.shape != target.shape:
            raise ConfigError(f"vfd: the student's {self.params.layer} features are {tuple(features_adv.shape[1:])}, "
                              f"the teacher's {tuple(target.shape[1:])}; distil from a teacher of the student's "
                              "architecture or choose another vfd.layer")
        loss = feature_distance(features_adv, target, self.params.distance)
        if self.params.clean:
            loss = loss + feature_distance(self.features(step.forward(CLEAN)), target, self.params.distance)
        return loss
