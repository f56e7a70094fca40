"""The setting of the stored official training steps (tests/fixtures/official_steps*.json, one per machine),
built with lbgat only.

The same weights, batch and attack start were given to the official code (LBGAT ``lbgat_loss`` and
TRADES ``trades_loss``, see docs/reproduction.md) to produce the stored hashes, in every setting of
tests/helpers/official_settings.py (seeds, batch sizes, plain and perturbed weights);
tests/methods/test_official_steps.py runs lbgat's step on them and compares, bit for bit. The first setting's
hashes are per tensor; the others' per group of tensors (``group_hashes``: x_adv, loss, grad, after), which
keeps the file small.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from helpers.official_settings import FIRST, LbgatStep, Setting, initial_state, make_batch
from lbgat.data.loader import Batch
from lbgat.methods import Method, TrainAttack, create_method
from lbgat.models import create_model
from lbgat.runtime.rng import Stream

STUDENT, TEACHER = "wrn-16-2", "resnet18-lbgat"  # official WideResNet(depth=16, widen_factor=2), ResNet18_cifar()
NUM_CLASSES, EPOCH = 10, 0
EPS, STEP_SIZE, STEPS = 0.031, 0.007, 10  # the official scripts' CIFAR settings
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 2e-4
# name: (lbgat method, its params, the official loss and its beta)
SCENARIOS: dict[str, tuple[str, dict[str, float], str, float]] = {
    "lbgat-trades-alpha6": ("lbgat-trades", {"alpha": 6.0}, "lbgat_loss", 6.0),
    "lbgat-trades-alpha0": ("lbgat-trades", {"alpha": 0.0}, "lbgat_loss", 0.0),
    "trades-beta6": ("trades", {"alpha": 6.0}, "trades_loss", 6.0),
}


def networks(uses_teacher: bool, setting: Setting) -> dict[str, nn.Module]:
    """lbgat's student (and teacher) in train mode with the setting's weights."""
    names = {"student": STUDENT, **({"teacher": TEACHER} if uses_teacher else {})}
    built = {}
    for role, name in names.items():
        model = create_model(name, num_classes=NUM_CLASSES)
        model.load_state_dict(initial_state(model, setting))
        built[role] = model.train()
    return built


def batch(setting: Setting) -> Batch:
    return make_batch(setting, EPOCH)


def start_noise(step_batch: Batch) -> torch.Tensor:
    """The standard normal draw lbgat's attack scales by 0.001 (the official ``torch.randn(x.shape)``)."""
    return step_batch.rng.normal(Stream.TRAIN_ATTACK_START, tuple(step_batch.x.shape[1:]))


def optimizer(nets: dict[str, nn.Module]) -> torch.optim.SGD:
    """The official scripts' SGD: one parameter group per network, student first."""
    groups = [{"params": list(net.parameters())} for net in nets.values()]
    return torch.optim.SGD(groups, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def lbgat_method(scenario: str, nets: dict[str, nn.Module]) -> Method:
    name, params, _, _ = SCENARIOS[scenario]
    attack = TrainAttack(eps=EPS, step_size=STEP_SIZE, steps=STEPS, start="normal")
    return create_method(name, nets["student"], teacher=nets.get("teacher"), params=params, attack=attack)


def sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def group_hashes(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """One sha256 per group of tensors (the part of the name before "/": x_adv, loss, grad, after), over each
    tensor's name, shape and bytes in name order: bit-identical groups, and no tensor added or dropped."""
    hashes: dict[str, hashlib._Hash] = {}
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest = hashes.setdefault(name.split("/", 1)[0], hashlib.sha256())
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}:".encode())
        digest.update(tensor.numpy().tobytes())
    return {group: digest.hexdigest() for group, digest in hashes.items()}


def record(x_adv: torch.Tensor, loss: torch.Tensor, nets: dict[str, nn.Module],
           gradients: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every tensor a step produces, by name: the attack's output, the loss, each gradient, and each
    parameter and buffer after the optimiser step."""
    tensors = {"x_adv": x_adv, "loss": loss}
    tensors.update({f"grad/{name}": grad for name, grad in gradients.items()})
    for role, net in nets.items():
        tensors.update({f"after/{role}.{key}": value for key, value in net.state_dict().items()})
    return tensors


def gradients_of(nets: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Each parameter's gradient; the WRN's unused sub_block1 has none (on both sides)."""
    return {f"{role}.{name}": p.grad.clone() for role, net in nets.items() for name, p in net.named_parameters()
            if p.grad is not None}


def prepare_lbgat_step(scenario: str, setting: Setting = FIRST) -> LbgatStep:
    """lbgat's step of ``scenario`` in ``setting``, set up."""
    nets = networks(SCENARIOS[scenario][0] != "trades", setting)
    return LbgatStep(lbgat_method(scenario, nets), nets, optimizer(nets), batch(setting))


def lbgat_step(scenario: str, setting: Setting = FIRST) -> dict[str, torch.Tensor]:
    """One lbgat training step of ``scenario`` in ``setting``, every tensor it produced by name."""
    step = prepare_lbgat_step(scenario, setting)
    method = step.method
    captured = {}
    adversarial = method.adversarial

    def capture(step_batch: Batch) -> torch.Tensor:
        captured["x_adv"] = adversarial(step_batch)
        return captured["x_adv"]

    method.adversarial = capture
    gradients: dict[str, torch.Tensor] = {}
    loss = step.run(lambda: gradients.update(gradients_of(step.trained)))["loss"]
    return record(captured["x_adv"], loss, step.trained, gradients)
