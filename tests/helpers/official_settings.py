"""The settings every stored official step is run in: seeds x batch sizes x initial states.

One setting can be lucky: an attack's sign steps amplify a rounding difference only where an input gradient
is near zero, so a difference of arithmetic can pass in one setting and change x_adv by whole steps in
another. Each official step (tests/helpers/official_step_setting.py,
tests/helpers/official_plugin_setting.py) is therefore stored in every setting below, and the tests check every one.

A setting is
- ``seed``: the batch's seed (lbgat's start draw, which the official code is given) and the labels'
  rotation, ``y_i = (i + seed - 1) mod 10`` (so ISEAT, which has no random start, sees another batch too);
- ``batch_size``: 8 or 16 fixed images ``deterministic_inputs`` (16 begins with the 8);
- ``state``: ``plain`` (``tests/helpers/deterministic.py`` ``deterministic_state``) or ``perturbed`` (that state
  moved by half its own scale along a second integer-hash draw: weights no initialiser makes, with BatchNorm
  statistics away from their usual values).

The first, seed 1 / batch 8 / plain, is the setting of the first stored files; files of
a machine stored in the first layout hold that one only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from helpers.deterministic import deterministic_inputs, deterministic_state, integer_hash_uniform
from lbgat.data.loader import Batch
from lbgat.methods import Method
from lbgat.methods.step import LossTerms

NUM_CLASSES = 10
STATES = ("plain", "perturbed")
PERTURBATION_SALT = 1_000  # the second draw's salts: far from deterministic_state's (the tensor's index)


@dataclass(frozen=True)
class Setting:
    seed: int
    batch_size: int
    state: str

    @property
    def key(self) -> str:
        return f"seed{self.seed}-batch{self.batch_size}-{self.state}"


FIRST = Setting(1, 8, "plain")
SETTINGS: tuple[Setting, ...] = tuple(Setting(seed, size, state) for state in STATES for size in (8, 16)
                                      for seed in (1, 2, 3))
assert SETTINGS[0] == FIRST
BY_KEY = {setting.key: setting for setting in SETTINGS}


def labels(setting: Setting) -> torch.Tensor:
    return (torch.arange(setting.batch_size) + setting.seed - 1) % NUM_CLASSES


def make_batch(setting: Setting, epoch: int) -> Batch:
    x = deterministic_inputs(setting.batch_size, (3, 32, 32))
    return Batch(x, labels(setting), torch.arange(setting.batch_size), epoch=epoch, seed=setting.seed)


def perturbed_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``deterministic_state`` plus half its scale along another draw, by key order as it is (so the
    official classes, whose keys come in the same order, get the same tensors): weights
    w + 0.5 sqrt(3 / fan_in) v, BatchNorm scales and variances times (1 + 0.5 v'), biases and means + 0.05 v'."""
    state = deterministic_state(model)
    for index, (key, value) in enumerate(state.items()):
        if not value.is_floating_point():
            continue
        wave = integer_hash_uniform(value.numel(), salt=index + PERTURBATION_SALT).view(value.shape)
        if value.dim() >= 2:
            moved = value + 0.5 * math.sqrt(3.0 / math.prod(value.shape[1:])) * wave
        elif key.endswith(("running_var", "weight")):  # stays positive: (1 + 0.5 v') >= 0.5
            moved = value * (1.0 + 0.5 * wave)
        else:
            moved = value + 0.05 * wave
        state[key] = moved.to(value.dtype)
    return state


def initial_state(model: nn.Module, setting: Setting) -> dict[str, torch.Tensor]:
    return deterministic_state(model) if setting.state == "plain" else perturbed_state(model)


@dataclass
class LbgatStep:
    """lbgat's side of a stored official step, set up on its objects (tests/helpers/official_step_setting.py,
    tests/helpers/official_plugin_setting.py; benchmarks/train_step.py times it against the official one)."""

    method: Method
    trained: dict[str, nn.Module]  # the networks the optimiser updates, by role
    optimizer: torch.optim.Optimizer
    batch: Batch

    def run(self, before_update: Callable[[], None] | None = None) -> LossTerms:
        """One training step as the trainer takes it: the method's terms, the loss's backward, then
        ``before_update`` (reading the gradients), the optimiser's step and the method's ``after_step``."""
        self.method.train()
        self.optimizer.zero_grad(set_to_none=True)
        terms = self.method(self.batch)
        terms["loss"].backward()
        if before_update is not None:
            before_update()
        self.optimizer.step()
        self.method.after_step()
        return terms
