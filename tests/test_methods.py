"""Every method's loss against an independent computation of its formula in the spec:
values, gradients, which parameters each term trains, BN modes and BN statistics."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lbgat.data.loader import Batch
from lbgat.methods import TrainAttack, create_method, get_method, list_methods
from lbgat.rng import Stream
from references import official_attack

NUM_CLASSES = 5
EPS, STEP, STEPS = 0.031, 0.007, 4


class BNNet(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width * 8 * 8, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


# --- independent formulas (written from the spec, not from the library) --------------------------

def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    log_probs = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -log_probs.gather(1, labels[:, None]).mean()


def mse_mean_over_b_times_c(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).sum() / a.numel()


def kl_batchmean(target_logits: torch.Tensor, input_logits: torch.Tensor) -> torch.Tensor:
    """(1/B) sum_i sum_k p_ik (log p_ik - log q_ik), p = softmax(target), q = softmax(input)."""
    log_p = target_logits - torch.logsumexp(target_logits, dim=1, keepdim=True)
    log_q = input_logits - torch.logsumexp(input_logits, dim=1, keepdim=True)
    return (log_p.exp() * (log_p - log_q)).sum() / target_logits.shape[0]


def reference_attack(model: nn.Module, batch: Batch, objective: str, start: str) -> torch.Tensor:
    shape = tuple(batch.x.shape[1:])
    if start == "normal":
        noise = 0.001 * batch.rng.normal(Stream.TRAIN_ATTACK_START, shape)
    else:
        noise = (batch.rng.uniform(Stream.TRAIN_ATTACK_START, shape) * 2 - 1) * EPS
    return official_attack(model, batch.x, batch.y, noise, eps=EPS, step_size=STEP, steps=STEPS, objective=objective)


def reference_loss(name: str, student: nn.Module, teacher: nn.Module | None, batch: Batch,
                   alpha: float, beta: float) -> dict[str, torch.Tensor]:
    """The spec's formula for ``name``, with the forwards in the official order (BN statistics)."""
    x, y = batch.x, batch.y
    if name == "natural":
        ce = cross_entropy(student(x), y)
        return {"loss": ce, "ce": ce}
    if name == "pgd-at":
        ce_adv = cross_entropy(student(reference_attack(student, batch, "ce", "uniform")), y)
        return {"loss": ce_adv, "ce_adv": ce_adv}
    if name == "trades":  # spec 3.1: forwards x, x', x; nothing detached but x'
        x_adv = reference_attack(student, batch, "kl", "normal")
        ce = cross_entropy(student(x), y)
        logits_adv = student(x_adv)
        kl = kl_batchmean(student(x), logits_adv)
        return {"loss": ce + alpha * kl, "ce": ce, "kl": kl}
    if name == "lbgat-trades":  # spec 6.2: student(x'), student(x), teacher(x)
        x_adv = reference_attack(student, batch, "kl", "normal")
        logits_adv, logits_clean, logits_teacher = student(x_adv), student(x), teacher(x)
        mse = mse_mean_over_b_times_c(logits_adv, logits_teacher)
        ce_teacher = cross_entropy(logits_teacher, y)
        kl = kl_batchmean(logits_clean, logits_adv)
        return {"loss": mse + beta * ce_teacher + alpha * kl, "mse": mse, "ce_teacher": ce_teacher, "kl": kl}
    if name == "lbgat":  # spec 6.3: CE-PGD attack, no student CE, no KL
        x_adv = reference_attack(student, batch, "ce", "uniform")
        logits_adv, logits_teacher = student(x_adv), teacher(x)
        mse = mse_mean_over_b_times_c(logits_adv, logits_teacher)
        ce_teacher = cross_entropy(logits_teacher, y)
        return {"loss": mse + beta * ce_teacher, "mse": mse, "ce_teacher": ce_teacher}
    raise AssertionError(name)


# --- fixtures ----------------------------------------------------------------------------------

PARAMS = {"natural": {}, "pgd-at": {}, "trades": {"alpha": 6.0}, "lbgat-trades": {"alpha": 6.0, "beta": 1.0},
          "lbgat": {"beta": 1.0}}
METHOD_NAMES = sorted(PARAMS)


def make_batch(seed: int = 0, size: int = 6) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(size, 3, 8, 8, generator=generator)
    y = torch.randint(0, NUM_CLASSES, (size,), generator=generator)
    return Batch(x, y, torch.arange(10, 10 + size), epoch=2, seed=5)


def make_method(name: str, params: dict | None = None):
    torch.manual_seed(0)
    student = BNNet()
    teacher = BNNet(width=6) if get_method(name).uses_teacher else None
    attack = TrainAttack(eps=EPS, step_size=STEP, steps=STEPS, start=get_method(name).default_start)
    method = create_method(name, student, params=PARAMS[name] if params is None else params, attack=attack,
                           teacher=teacher)
    return method.train()


def test_every_registered_method_is_covered() -> None:
    assert sorted(method.name for method in list_methods()) == METHOD_NAMES


CASES = [(name, PARAMS[name]) for name in METHOD_NAMES] + [
    ("trades", {"alpha": 0.0}),
    ("lbgat-trades", {"alpha": 0.0, "beta": 1.0}),
    ("lbgat-trades", {"alpha": 1.0, "beta": 2.5}),
]


@pytest.mark.parametrize(("name", "params"), CASES)
def test_loss_terms_and_gradients_match_the_formula(name: str, params: dict) -> None:
    method = make_method(name, params)
    reference = copy.deepcopy(method)
    batch = make_batch()
    terms = method(batch)
    expected = reference_loss(name, reference.student, reference.teacher, batch, params.get("alpha", 0.0),
                              params.get("beta", 1.0))
    assert set(terms) == set(expected)
    for term, value in expected.items():
        torch.testing.assert_close(terms[term], value, rtol=1e-5, atol=1e-6, msg=f"{name}: {term}")
    terms["loss"].backward()
    expected["loss"].backward()
    for (param_name, ours), theirs in zip(method.named_parameters(), reference.parameters(), strict=True):
        assert (ours.grad is None) == (theirs.grad is None), param_name
        if ours.grad is not None:
            torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-6, msg=f"{name}: {param_name}")
    # The forwards ran in the official order: BatchNorm running statistics agree exactly.
    for (buffer_name, ours), theirs in zip(method.named_buffers(), reference.buffers(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-7, msg=f"{name}: {buffer_name}")


# Which network each term trains (spec 3.1, 6.2, 6.3): True = gets a gradient.
ROUTING = {
    ("lbgat-trades", "mse"): {"student": True, "teacher": True},
    ("lbgat-trades", "ce_teacher"): {"student": False, "teacher": True},
    ("lbgat-trades", "kl"): {"student": True, "teacher": False},
    ("lbgat", "mse"): {"student": True, "teacher": True},
    ("lbgat", "ce_teacher"): {"student": False, "teacher": True},
    ("trades", "ce"): {"student": True},
    ("trades", "kl"): {"student": True},
    ("pgd-at", "ce_adv"): {"student": True},
    ("natural", "ce"): {"student": True},
}


@pytest.mark.parametrize(("name", "term"), sorted(ROUTING))
def test_gradient_routing_of_each_term(name: str, term: str) -> None:
    method = make_method(name)
    terms = method(make_batch(seed=1))
    for network_name, expects_gradient in ROUTING[(name, term)].items():
        parameters = list(getattr(method, network_name).parameters())
        grads = torch.autograd.grad(terms[term], parameters, retain_graph=True, allow_unused=True)
        has_gradient = any(grad is not None and grad.abs().sum() > 0 for grad in grads)
        assert has_gradient == expects_gradient, f"{name}.{term} -> {network_name}"


def test_trades_kl_trains_through_both_the_clean_and_the_adversarial_branch() -> None:
    method = make_method("trades")
    batch = make_batch(seed=2)
    terms = method(batch)
    grad_full = torch.autograd.grad(terms["kl"], method.student.fc.weight, retain_graph=True)[0]
    # Detaching the clean target would drop a part of the gradient: it must differ from the full one.
    reference = copy.deepcopy(make_method("trades"))
    x_adv = reference_attack(reference.student, batch, "kl", "normal")
    reference.student(batch.x)
    logits_adv = reference.student(x_adv)
    kl_detached = kl_batchmean(reference.student(batch.x).detach(), logits_adv)
    grad_detached = torch.autograd.grad(kl_detached, reference.student.fc.weight)[0]
    assert not torch.allclose(grad_full, grad_detached)


@pytest.mark.parametrize("name", ["lbgat-trades", "lbgat"])
def test_attack_runs_in_eval_mode_and_the_teacher_always_in_train_mode(name: str) -> None:
    method = make_method(name)
    method.teacher.eval()  # even if someone switched it, the official code keeps it training
    student_modes: list[bool] = []
    teacher_modes: list[bool] = []
    method.student.bn.register_forward_hook(lambda module, inputs, output: student_modes.append(module.training))
    method.teacher.bn.register_forward_hook(lambda module, inputs, output: teacher_modes.append(module.training))
    method(make_batch())
    clean_forwards = 1 if name == "lbgat-trades" else 0  # the KL attack's cached clean prediction
    attack_forwards = STEPS + clean_forwards
    assert student_modes[:attack_forwards] == [False] * attack_forwards
    assert all(student_modes[attack_forwards:]) and len(student_modes) > attack_forwards
    assert teacher_modes == [True]
    assert method.student.training


def test_one_optimiser_step_over_both_networks_matches_algorithm_1() -> None:
    method = make_method("lbgat-trades")
    reference = copy.deepcopy(method)
    batch = make_batch(seed=3)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    method(batch)["loss"].backward()
    optimizer.step()
    loss = reference_loss("lbgat-trades", reference.student, reference.teacher, batch, 6.0, 1.0)["loss"]
    loss.backward()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter -= 0.1 * (parameter.grad + 2e-4 * parameter)
    for ours, theirs in zip(method.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


def test_method_hyperparameters_are_typed() -> None:
    from lbgat.errors import ConfigError

    with pytest.raises(ConfigError, match="method.alpha"):
        make_method("trades", {"alpha": "six"})
    with pytest.raises(ConfigError, match="unknown setting 'method.gamma'"):
        make_method("lbgat-trades", {"gamma": 1.0})
    assert make_method("lbgat-trades", {"alpha": 0}).params.alpha == 0.0
