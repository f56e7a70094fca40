"""The setting of the stored official MART, AWP, ISEAT and RPAT steps (tests/data/official_plugins*.pt.xz),
built with lbgat only (issue 15 item 7).

The same weights, batch and attack start were given to the official code (tools/official_compare, see
docs/reproduction.md "MART, AWP, ISEAT and RPAT against the official code") to produce the stored tensors;
tests/test_official_plugins.py runs lbgat's step on them and compares. Each scenario is one optimiser step
of one registered lbgat model (``wrn-10-1``: small, with BatchNorm) on 8 fixed images, with the attack,
loss and SGD settings of the official training script it was compared with.
"""

from __future__ import annotations

import hashlib
import io
import lzma
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lbgat.data.loader import Batch
from lbgat.methods import TrainAttack
from lbgat.models import create_model
from lbgat.runtime.rng import Stream
from test_models import deterministic_inputs, deterministic_state

MODEL, NUM_CLASSES, BATCH_SIZE, SEED = "wrn-10-1", 10, 8, 1
# AT_AWP/utils.py's cifar10_mean / cifar10_std: AT_AWP normalises inside its training script, lbgat inside
# the model (create_model(mean=..., std=...)); the arithmetic, (x - mean) / std in float32, is the same.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
STORED = Path(__file__).parent / "data" / "official_plugins.pt.xz"  # the first machine's (official_machines.py)


@dataclass(frozen=True)
class Scenario:
    """One official training step, as lbgat expresses it."""

    host: str
    params: dict[str, Any]
    plugins: dict[str, dict[str, Any]]
    eps: float
    step_size: float
    steps: int
    start: str  # "normal" (x + 0.001 N), "uniform" (x + U(-eps, eps)) or "none"
    bn_mode: str  # the BatchNorm mode of the attack
    lr: float
    momentum: float
    weight_decay: float
    official: str  # what official code made the stored step
    epoch: int = 0
    normalize: bool = False  # CIFAR-10 mean/std normalisation (inside the model here)
    notes: tuple[str, ...] = field(default=())


EIGHT, TWO = 8 / 255, 2 / 255
SCENARIOS: dict[str, Scenario] = {
    "mart": Scenario(
        "mart", {"beta": 6.0}, {}, 0.031, 0.007, 10, "normal", "eval", 0.1, 0.9, 7e-4,
        "YisenWang/MART mart.py mart_loss (train_wideresnet.py settings), loss.backward(), optimizer.step()"),
    "pgd-at+awp": Scenario(
        "pgd-at", {}, {"awp": {"gamma": 0.01, "eta": 0.01, "warmup_epochs": 0}}, EIGHT, TWO, 10, "uniform",
        "train", 0.1, 0.9, 5e-4,
        "csdongxian/AWP AT_AWP/train_cifar10.py step: attack_pgd, AdvWeightPerturb.calc_awp/perturb, CE, "
        "backward, step, restore", normalize=True),
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
        "pgd-at", {}, {"rpat": {"lam": 1.0, "r": 0.5}}, EIGHT, TWO, 10, "uniform", "eval", 0.1, 0.9, 5e-4,
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


def network(scenario: Scenario) -> nn.Module:
    """lbgat's wrn-10-1 in train mode with ``deterministic_state`` weights (normalisation buffers are not
    in the state dict, so the weights are the same with or without it)."""
    norm = {"mean": CIFAR10_MEAN, "std": CIFAR10_STD} if scenario.normalize else {}
    model = create_model(MODEL, num_classes=NUM_CLASSES, **norm)
    model.load_state_dict(deterministic_state(model))
    return model.train()


def batch(scenario: Scenario) -> Batch:
    x = deterministic_inputs(BATCH_SIZE, (3, 32, 32))
    y = torch.arange(BATCH_SIZE) % NUM_CLASSES
    return Batch(x, y, torch.arange(BATCH_SIZE), epoch=scenario.epoch, seed=SEED)


def start_draw(step_batch: Batch, start: str) -> torch.Tensor | None:
    """lbgat's own random draw for the attack start (lbgat.attacks.pgd): for ``"normal"`` the standard
    normal n of x + 0.001 n; for ``"uniform"`` the unit u of x + (2u - 1) eps. None for ``"none"``."""
    shape = tuple(step_batch.x.shape[1:])
    if start == "normal":
        return step_batch.rng.normal(Stream.TRAIN_ATTACK_START, shape)
    if start == "uniform":
        return step_batch.rng.uniform(Stream.TRAIN_ATTACK_START, shape)
    return None


def optimizer(scenario: Scenario, model: nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=scenario.lr, momentum=scenario.momentum,
                           weight_decay=scenario.weight_decay)


def train_attack(scenario: Scenario) -> TrainAttack:
    return TrainAttack(eps=scenario.eps, step_size=scenario.step_size, steps=scenario.steps,
                       start=scenario.start, bn_mode=scenario.bn_mode)  # type: ignore[arg-type]


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


def lbgat_step(name: str) -> dict[str, torch.Tensor]:
    """One lbgat training step of scenario ``name`` (issue 15 API: plug-ins, after_step), every tensor."""
    from lbgat.methods import create_method

    scenario = SCENARIOS[name]
    model = network(scenario)
    plugins = {"plugins": scenario.plugins} if scenario.plugins else {}
    method = create_method(scenario.host, model, params=scenario.params, attack=train_attack(scenario),
                           **plugins)  # type: ignore[call-arg]
    captured: dict[str, torch.Tensor] = {}
    adversarial = method.adversarial

    def capture(step_batch: Batch) -> torch.Tensor:
        captured["x_adv"] = adversarial(step_batch)
        return captured["x_adv"]

    method.adversarial = capture  # type: ignore[method-assign]
    if hasattr(method, "pgd"):  # ISEAT runs its own attack (the official arithmetic) instead of adversarial()
        attack = method.pgd

        def capture_pgd(*args: Any, **kwargs: Any) -> torch.Tensor:
            captured["x_adv"] = attack(*args, **kwargs)
            return captured["x_adv"]

        method.pgd = capture_pgd  # type: ignore[method-assign]
    sgd = optimizer(scenario, model)
    method.train()
    sgd.zero_grad(set_to_none=True)
    terms = method(batch(scenario))
    terms["loss"].backward()
    gradients = {key: p.grad.clone() for key, p in model.named_parameters() if p.grad is not None}
    sgd.step()
    method.after_step()
    return record(captured["x_adv"], terms, gradients, model)


def sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def load_stored(path: Path = STORED) -> dict[str, Any]:
    """The stored official outputs: an xz-compressed torch file, loaded without executing code."""
    return torch.load(io.BytesIO(lzma.decompress(path.read_bytes())), weights_only=True)


# How the official tensors are stored (tests/data/official_plugins.pt.xz must stay small: about 180,000
# numbers per scenario, most of them gradients). Each is stored so that decoding gives it back to within
# QUANTUM / 2 = 5e-9, far inside the 1e-6 the comparison allows:
#   "x_adv"     round((x_adv - x) / QUANTUM), x the batch's clean images;
#   "grad/*"    round(g / QUANTUM);
#   "after/*"   of a parameter: round((w' - w_sgd) / QUANTUM), w_sgd = w - lr (g + wd w) the plain first SGD
#               step from the ``deterministic_state`` weights w with the stored g (what remains is rounding
#               and, with a weight perturbation, what the step at the perturbed point left behind);
#   the rest    (the loss terms, BatchNorm buffers) as they are.
# The integers are mostly small, so the xz compression of the file takes them to a few bits each.
QUANTUM = 1e-8


def _before(scenario: Scenario) -> dict[str, torch.Tensor]:
    return {key: value.double() for key, value in network(scenario).state_dict().items()}


def _sgd_prediction(scenario: Scenario, key: str, before: dict[str, torch.Tensor],
                    gradients: dict[str, torch.Tensor]) -> torch.Tensor:
    weight = before[key]
    gradient = gradients.get(key)
    if gradient is None:
        return weight
    return weight - scenario.lr * (gradient + scenario.weight_decay * weight)


def _quantised(value: torch.Tensor) -> torch.Tensor:
    return torch.round(value / QUANTUM).to(torch.int64)


def encode(tensors: dict[str, torch.Tensor], scenario: Scenario) -> dict[str, dict[str, Any]]:
    """The official step's tensors in their stored form (see QUANTUM); ``decode`` inverts it."""
    before = _before(scenario)
    parameters = set(dict(network(scenario).named_parameters()))
    gradients = {name[len("grad/"):]: tensor.double() for name, tensor in tensors.items()
                 if name.startswith("grad/")}
    stored: dict[str, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        key = name.split("/", 1)[-1]
        if name == "x_adv":
            stored[name] = {"as": "minus-x", "q": _quantised(tensor.double() - batch(scenario).x.double())}
        elif name.startswith("grad/"):
            stored[name] = {"as": "quantised", "q": _quantised(tensor.double())}
        elif name.startswith("after/") and key in parameters:
            residual = tensor.double() - _sgd_prediction(scenario, key, before, gradients)
            stored[name] = {"as": "sgd-residual", "q": _quantised(residual)}
        else:
            stored[name] = {"as": "value", "value": tensor.detach().clone()}
    return stored


def decode(stored: dict[str, Any], name: str) -> dict[str, torch.Tensor]:
    """Scenario ``name``'s official tensors, by name (float64 where they were quantised)."""
    scenario = SCENARIOS[name]
    encoded = stored["scenarios"][name]["tensors"]
    gradients = {key[len("grad/"):]: entry["q"].double() * QUANTUM for key, entry in encoded.items()
                 if entry["as"] == "quantised"}
    before = _before(scenario)
    tensors = {}
    for key, entry in encoded.items():
        if entry["as"] == "value":
            tensors[key] = entry["value"]
        elif entry["as"] == "minus-x":
            tensors[key] = batch(scenario).x.double() + entry["q"].double() * QUANTUM
        elif entry["as"] == "quantised":
            tensors[key] = entry["q"].double() * QUANTUM
        elif entry["as"] == "sgd-residual":
            prediction = _sgd_prediction(scenario, key.split("/", 1)[1], before, gradients)
            tensors[key] = prediction + entry["q"].double() * QUANTUM
        else:
            raise ValueError(f"unknown stored form {entry['as']!r} of {key}")
    return tensors


def differences(official: dict[str, torch.Tensor], ours: dict[str, torch.Tensor], atol: float = 1e-6,
                rtol: float = 1e-6) -> dict[str, tuple[float, str, list[str]]]:
    """Per group of tensors (x_adv, term, grad, after): the largest |official - lbgat|, the tensor it is in,
    and the tensors with an element beyond atol + rtol |official| (missing or reshaped ones included)."""
    groups: dict[str, tuple[float, str, list[str]]] = {}
    for key, theirs in official.items():
        group = key.split("/", 1)[0]
        largest, where, failing = groups.get(group, (0.0, "", []))
        mine = ours.get(key)
        if mine is None or mine.shape != theirs.shape:
            groups[group] = (float("inf"), key, [*failing, key])
            continue
        gap = (mine.double() - theirs.double()).abs()
        worst = float(gap.max()) if gap.numel() else 0.0
        if worst > largest or not where:
            largest, where = worst, key
        if bool((gap > atol + rtol * theirs.double().abs()).any()):
            failing = [*failing, key]
        groups[group] = (largest, where, failing)
    return groups
