"""A host method with plug-ins on the small network of the method tests."""

from __future__ import annotations

import torch
from torch import nn

from helpers.method_formulas import EPS, PARAMS, STEP, STEPS, BNNet
from lbgat.methods import TrainAttack, create_method, get_method
from lbgat.methods.teachers import FrozenEnsemble


def natural_teacher() -> nn.Module:
    torch.manual_seed(7)
    return BNNet()  # the student's architecture (spec 9.4)


def build(host: str, plugins: dict, params: dict | None = None):
    torch.manual_seed(0)
    params = PARAMS[host] if params is None else params
    student = BNNet()
    teacher = None
    if get_method(host).frozen_teacher:
        teacher = FrozenEnsemble([BNNet(width=6)])
    elif get_method(host).uses_teacher:
        teacher = BNNet(width=6)
    attack = TrainAttack(eps=EPS, step_size=STEP, steps=STEPS, start=get_method(host).default_start,
                         bn_mode=get_method(host).default_bn_mode)
    return create_method(host, student, params=params, attack=attack, teacher=teacher, plugins=plugins,
                         models=lambda checkpoint, what: natural_teacher()).train()
