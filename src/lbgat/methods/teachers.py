"""Teacher networks that are not a plain second model: a frozen ensemble (BGAT) and a teacher that
shares every weight of the student except BatchNorm (LBGAT Table 2, the "†" rows)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import ConfigError


class FrozenEnsemble(nn.Module):
    """Mean of its members' logits. Always in eval mode and never trained: BGAT's static natural
    teacher (averaging logits is the natural reading of the paper's "the ensemble")."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ConfigError("a frozen teacher ensemble needs at least one model")
        self.members = nn.ModuleList(members)
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenEnsemble:
        # A method may call teacher.train(); the frozen teacher's BatchNorm must stay in eval mode.
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.stack([member(x) for member in self.members]).mean(dim=0)


def share_all_but_batchnorm(teacher: nn.Module, student: nn.Module) -> None:
    """Make ``teacher`` use the student's parameters in every non-BatchNorm layer (the same tensors,
    so one update moves both), keeping its own BatchNorm weights and statistics. The two networks must
    have the same architecture."""
    teacher_modules = dict(teacher.named_modules())
    student_modules = dict(student.named_modules())
    teacher_shapes = {key: value.shape for key, value in teacher.state_dict().items()}
    student_shapes = {key: value.shape for key, value in student.state_dict().items()}
    if teacher_shapes != student_shapes or any(
        type(teacher_modules.get(name)) is not type(module) for name, module in student_modules.items()
    ):
        raise ConfigError("separate_bn needs the teacher to have the student's architecture (set teacher = model)")
    for name, student_module in student_modules.items():
        if isinstance(student_module, _BatchNorm):
            continue
        teacher_module = teacher_modules[name]
        for key, parameter in student_module.named_parameters(recurse=False):
            teacher_module._parameters[key] = parameter
