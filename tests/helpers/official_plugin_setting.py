"""The setting of the stored official MART, AWP, ISEAT and RPAT steps (tests/fixtures/official_plugins*.pt.xz),
built with lbgat only.

The same weights, batch and attack start were given to the official code (tools/official_compare, see
docs/reproduction.md "MART, AWP, ISEAT and RPAT against the official code") to produce the stored tensors;
tests/methods/test_official_plugins.py runs lbgat's step on them and compares. Each scenario is one optimiser step
of one registered lbgat model (``wrn-10-1``: small, with BatchNorm) with the attack, loss and SGD settings
of the official training script it was compared with, in each setting of tests/helpers/official_settings.py
(seeds, batch sizes, plain and perturbed weights).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from helpers.official_settings import FIRST, LbgatStep, Setting, initial_state, make_batch
from lbgat.data.loader import Batch
from lbgat.methods import TrainAttack
from lbgat.models import create_model
from lbgat.runtime.rng import Stream

MODEL, NUM_CLASSES = "wrn-10-1", 10
# AT_AWP/utils.py's cifar10_mean / cifar10_std: AT_AWP normalises inside its training script, lbgat inside
# the model (create_model(mean=..., std=...)); the arithmetic, (x - mean) / std in float32, is the same.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


@dataclass(frozen=True)
class Scenario:
    """One official training step, as lbgat expresses it."""

    host: str
    params: dict[str, Any]
    plugins: dict[str, dict[str, Any]]
    eps: float
    step_size: float
    steps: int
    start: str  # "normal" (x + 0.001 N), "uniform" (x + U(-eps, eps)), "uniform-clipped" (then in [0, 1]), "none"
    bn_mode: str  # the BatchNorm mode of the attack
    lr: float
    momentum: float
    weight_decay: float
    official: str  # what official code made the stored step
    epoch: int = 0
    normalize: bool = False  # CIFAR-10 mean/std normalisation (inside the model here)
    iterate: str = "x"  # what the attack keeps between steps: "x" (x') or "delta" (AT_AWP's delta)
    notes: tuple[str, ...] = field(default=())


EIGHT, TWO = 8 / 255, 2 / 255
SCENARIOS: dict[str, Scenario] = {
    "mart": Scenario(
        "mart", {"beta": 6.0}, {}, 0.031, 0.007, 10, "normal", "eval", 0.1, 0.9, 7e-4,
        "YisenWang/MART mart.py mart_loss (train_wideresnet.py settings), loss.backward(), optimizer.step()"),
    "pgd-at+awp": Scenario(
        "pgd-at", {}, {"awp": {"gamma": 0.01, "eta": 0.01, "warmup_epochs": 0}}, EIGHT, TWO, 10,
        "uniform-clipped", "train", 0.1, 0.9, 5e-4,
        "csdongxian/AWP AT_AWP/train_cifar10.py step: attack_pgd, AdvWeightPerturb.calc_awp/perturb, CE, "
        "backward, step, restore", normalize=True, iterate="delta"),
    "trades+awp": Scenario(
        "trades", {"alpha": 6.0, "adversarial_first": True}, {"awp": {"gamma": 0.005, "eta": 0.1, "warmup_epochs": 9}},
        EIGHT, TWO, 10,
        "normal", "eval", 0.1, 0.9, 5e-4,
        "csdongxian/AWP trades_AWP/train_trades_cifar.py step: perturb_input, TradesAWP.calc_awp/perturb, "
        "TRADES loss, backward, step, restore", epoch=10),
    "iseat": Scenario(
        "iseat", {"lam": [0.1], "gamma": [7e-3], "awp_eta": 0.01, "stage_epochs": [100, 150]}, {}, EIGHT, TWO,
        10, "none", "train", 0.1, 0.9, 5e-4,
        "TreeLLi/ISEAT src/utils/train.py update() on one batch, AWP on (gamma 7e-3, eta 0.01), lam 0.1"),
    "iseat-no-awp": Scenario(
        "iseat", {"lam": [0.1], "gamma": [0.0], "awp_eta": 0.01, "stage_epochs": [100, 150]}, {}, EIGHT, TWO,
        10, "none", "train", 0.1, 0.9, 5e-4,
        "TreeLLi/ISEAT src/utils/train.py update() on one batch, AWP off (no -ag), lam 0.1"),
    "pgd-at+rpat": Scenario(
        "pgd-at", {}, {"rpat": {"lam": 1.0, "r": 0.5}}, EIGHT, TWO, 10, "uniform-clipped", "eval", 0.1, 0.9, 5e-4,
        "FlaAI/RPAT RPAT_Benchmarks/training/adv_train/adv_train_ra.py train() on one batch, advertorch "
        "PGDAttack in EvalBN"),
    "trades+rpat": Scenario(
        "trades", {"alpha": 6.0}, {"rpat": {"lam": 1.0, "r": 0.5}}, EIGHT, TWO, 10, "normal", "eval",
        0.1, 0.9, 5e-4,
        "FlaAI/RPAT RPAT_Benchmarks/training/adv_train/adv_trades_ra.py train() on one batch (generate_trades)"),
    "mart+rpat": Scenario(
        "mart", {"beta": 6.0}, {"rpat": {"lam": 1.0, "r": 0.5}}, EIGHT, TWO, 10, "normal", "eval", 0.1, 0.9,
        5e-4, "FlaAI/RPAT RPAT_Benchmarks/training/adv_train/adv_mart_ra.py train() on one batch (mart_loss_ra)"),
}


def network(scenario: Scenario, setting: Setting) -> nn.Module:
    """lbgat's wrn-10-1 in train mode with the setting's weights (normalisation buffers are not in the
    state dict, so the weights are the same with or without it)."""
    norm = {"mean": CIFAR10_MEAN, "std": CIFAR10_STD} if scenario.normalize else {}
    model = create_model(MODEL, num_classes=NUM_CLASSES, **norm)
    model.load_state_dict(initial_state(model, setting))
    return model.train()


def batch(scenario: Scenario, setting: Setting) -> Batch:
    return make_batch(setting, scenario.epoch)


def start_draw(step_batch: Batch, start: str) -> torch.Tensor | None:
    """lbgat's own random draw for the attack start (lbgat.attacks.pgd): for ``"normal"`` the standard
    normal n of x + 0.001 n; for ``"uniform"`` (clipped or not) the unit u of x + (2u - 1) eps. None for
    ``"none"``."""
    shape = tuple(step_batch.x.shape[1:])
    if start == "normal":
        return step_batch.rng.normal(Stream.TRAIN_ATTACK_START, shape)
    if start.startswith("uniform"):
        return step_batch.rng.uniform(Stream.TRAIN_ATTACK_START, shape)
    return None


def optimizer(scenario: Scenario, model: nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=scenario.lr, momentum=scenario.momentum,
                           weight_decay=scenario.weight_decay)


def train_attack(scenario: Scenario) -> TrainAttack:
    return TrainAttack(eps=scenario.eps, step_size=scenario.step_size, steps=scenario.steps,
                       start=scenario.start, bn_mode=scenario.bn_mode,  # type: ignore[arg-type]
                       iterate=scenario.iterate)  # type: ignore[arg-type]


def record(x_adv: torch.Tensor, terms: dict[str, torch.Tensor], gradients: dict[str, torch.Tensor],
           model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor one step produced, by name: ``x_adv``, ``term/NAME`` (the loss is ``term/loss``),
    ``grad/PARAM`` before the step, ``after/KEY`` (each parameter and buffer after the step and the
    weight perturbation's restore)."""
    tensors = {"x_adv": x_adv.detach().clone()}
    tensors.update({f"term/{name}": value.detach().clone() for name, value in terms.items()})
    tensors.update({f"grad/{name}": grad.detach().clone() for name, grad in gradients.items()})
    tensors.update({f"after/{key}": value.detach().clone() for key, value in model.state_dict().items()})
    return tensors


def prepare_lbgat_step(name: str, setting: Setting = FIRST, attack: dict[str, str] | None = None) -> LbgatStep:
    """lbgat's step of scenario ``name`` in ``setting``, set up (plug-ins, after_step); ``attack``
    replaces attack fields of the scenario (``start``, ``iterate``)."""
    from lbgat.methods import create_method

    scenario = dataclasses.replace(SCENARIOS[name], **(attack or {}))
    model = network(scenario, setting)
    plugins = {"plugins": scenario.plugins} if scenario.plugins else {}
    method = create_method(scenario.host, model, params=scenario.params, attack=train_attack(scenario),
                           **plugins)  # type: ignore[call-arg]
    return LbgatStep(method, {"model": model}, optimizer(scenario, model), batch(scenario, setting))


def lbgat_step(name: str, setting: Setting = FIRST, attack: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """One lbgat training step of scenario ``name`` in ``setting``, every tensor; ``attack`` replaces attack
    fields of the scenario (``start``, ``iterate``)."""
    step = prepare_lbgat_step(name, setting, attack)
    method, model = step.method, step.trained["model"]
    captured: dict[str, torch.Tensor] = {}
    adversarial = method.adversarial

    def capture(step_batch: Batch) -> torch.Tensor:
        captured["x_adv"] = adversarial(step_batch)
        return captured["x_adv"]

    method.adversarial = capture  # type: ignore[method-assign]
    if hasattr(method, "pgd"):  # ISEAT runs its own attack (the official arithmetic) instead of adversarial()
        attack_pgd = method.pgd

        def capture_pgd(*args: Any, **kwargs: Any) -> torch.Tensor:
            captured["x_adv"] = attack_pgd(*args, **kwargs)
            return captured["x_adv"]

        method.pgd = capture_pgd  # type: ignore[method-assign]
    gradients: dict[str, torch.Tensor] = {}
    terms = step.run(lambda: gradients.update(
        {key: p.grad.clone() for key, p in model.named_parameters() if p.grad is not None}))
    return record(captured["x_adv"], terms, gradients, model)
