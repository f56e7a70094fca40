"""What a plug-in sees of one training step: the host's forwards of the student, reused by input."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..data.loader import Batch

if TYPE_CHECKING:
    from .base import Method


@dataclass
class Forward:
    """One forward of the student in this step: its input, its logits, and the watched modules' features."""

    inputs: torch.Tensor
    logits: torch.Tensor
    features: dict[int, torch.Tensor]  # by id() of the watched module


@dataclass
class ForwardLog:
    """The student's forwards in this step, found by their input tensor (identity): a plug-in asks for f(x)
    and gets the host's own f(x) when the host made one with a graph."""

    entries: list[Forward] = field(default_factory=list)
    pending: dict[int, torch.Tensor] = field(default_factory=dict)  # features of the forward under way

    def find(self, inputs: torch.Tensor) -> Forward | None:
        for entry in self.entries:
            if entry.inputs is inputs and (entry.logits.requires_grad or not torch.is_grad_enabled()):
                return entry
        return None


def penultimate(model: nn.Module) -> nn.Module:
    """The model's last linear layer: its input is the penultimate feature (after global pooling)."""
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear layer to take the penultimate feature from")
    return linears[-1]


def watch(module: nn.Module, store: Callable[[nn.Module, torch.Tensor], None], *, takes_input: bool) -> Any:
    """A hook handing ``store`` the module's input (its first argument) or its output, flattened per example."""
    if takes_input:
        def before(hooked: nn.Module, args: tuple[Any, ...]) -> None:
            store(hooked, args[0].flatten(1))
        return module.register_forward_pre_hook(before)

    def after(hooked: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        store(hooked, output.flatten(1))
    return module.register_forward_hook(after)


@contextmanager
def recording(student: nn.Module, log: ForwardLog, watched: Sequence[tuple[nn.Module, bool]] = ()
              ) -> Iterator[ForwardLog]:
    """Record every forward of ``student`` (its top-level call) into ``log`` for the block, with the
    features of each ``(module, takes_input)`` watched."""

    def begin(module: nn.Module, args: tuple[Any, ...]) -> None:
        log.pending = {}

    def end(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        if args and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor):
            log.entries.append(Forward(args[0], output, log.pending))
        log.pending = {}

    def store(module: nn.Module, features: torch.Tensor) -> None:
        log.pending[id(module)] = features

    handles = [student.register_forward_pre_hook(begin), student.register_forward_hook(end)]
    handles += [watch(module, store, takes_input=takes_input) for module, takes_input in watched]
    try:
        yield log
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class StepView:
    """What a regulariser sees of one training step."""

    method: Method
    batch: Batch
    x_adv: torch.Tensor
    log: ForwardLog

    @property
    def student(self) -> nn.Module:
        return self.method.student

    def forward(self, inputs: torch.Tensor) -> Forward:
        """The student's forward on ``inputs``: the host's own on that very tensor if it made one with a
        graph, otherwise a new one (recorded, so a later request reuses it)."""
        found = self.log.find(inputs)
        if found is None:
            recorded = len(self.log.entries)
            logits = self.student(inputs)
            if len(self.log.entries) == recorded:  # the hooks did not run (a compiled student): keep it anyway
                self.log.entries.append(Forward(inputs, logits, {}))
            found = self.log.entries[-1]
        return found

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.forward(inputs).logits

    def features(self, inputs: torch.Tensor, module: nn.Module) -> torch.Tensor:
        """The watched ``module``'s features in the student's forward on ``inputs``."""
        return self.forward(inputs).features[id(module)]
