"""Every method's loss against an independent computation of its formula in the spec:
values, gradients, which parameters each term trains, BN modes and BN statistics."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from helpers.method_formulas import (
    EPS,
    METHOD_NAMES,
    PARAMS,
    STEP,
    STEPS,
    BNNet,
    kl_batchmean,
    make_batch,
    make_method,
    reference_attack,
    reference_loss,
)
from lbgat.methods import TrainAttack, create_method, list_methods


def test_every_registered_method_is_covered() -> None:
    assert sorted(method.name for method in list_methods()) == METHOD_NAMES


CASES = [(name, PARAMS[name]) for name in METHOD_NAMES] + [
    ("trades", {"alpha": 0.0}),
    ("lbgat-trades", {"alpha": 0.0, "beta": 1.0}),
    ("lbgat-trades", {"alpha": 1.0, "beta": 2.5}),
    ("alp", {"alpha": 0.5, "variant": "original"}),
    ("alp", {"alpha": 0.5, "variant": "original", "label_smoothing": 0.0}),
    ("bgat-trades", {"alpha": 0.0}),
    # the Table 1 ablations and the other guidance knobs
    ("lbgat-trades", {"alpha": 0.0, "guidance": "kl"}),
    ("lbgat-trades", {"alpha": 0.0, "guidance": "kl-reverse"}),
    ("lbgat-trades", {"alpha": 0.0, "student_ce": 1.0}),
    ("lbgat-trades", {"alpha": 6.0, "mse_reduction": "sum"}),
    ("lbgat-trades", {"alpha": 6.0, "detach_teacher": True}),
    ("lbgat-trades", {"alpha": 6.0, "separate_bn": True}),
    ("lbgat", {"beta": 0.5, "separate_bn": True, "student_ce": 0.3}),
    ("lbgat-alp", {"alpha": 2.0, "beta": 1.0, "guidance": "kl"}),
    ("bgat", {"student_ce": 1.0, "mse_reduction": "sum"}),
    ("mart", {"beta": 2.5}),
    ("iseat", {"lam": [0.0], "gamma": [0.0]}),
    ("iseat", {"lam": [0.0, 2.0], "gamma": [0.0], "stage_epochs": [1]}),  # epoch 2 is in the second stage
]


@pytest.mark.parametrize(("name", "params"), CASES)
def test_loss_terms_and_gradients_match_the_formula(name: str, params: dict) -> None:
    method = make_method(name, params)
    reference = copy.deepcopy(method)
    batch = make_batch()
    terms = method(batch)
    expected = reference_loss(name, reference.student, reference.teacher, batch, params)
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
    ("alp", "ce_adv"): {"student": True},
    ("alp", "pairing"): {"student": True},
    ("lbgat-alp", "mse"): {"student": True, "teacher": True},
    ("lbgat-alp", "ce_teacher"): {"student": False, "teacher": True},
    ("lbgat-alp", "pairing"): {"student": True, "teacher": False},
    ("bgat", "mse"): {"student": True, "teacher": False},
    ("bgat-trades", "mse"): {"student": True, "teacher": False},
    ("bgat-trades", "kl"): {"student": True, "teacher": False},
    ("bgat-alp", "pairing"): {"student": True, "teacher": False},
    ("mart", "bce"): {"student": True},
    ("mart", "kl"): {"student": True},
    ("iseat", "ce_adv"): {"student": True},
    ("iseat", "smoothness"): {"student": True},
}


def gets_gradient(term: torch.Tensor, network: nn.Module) -> bool:
    parameters = [parameter for parameter in network.parameters() if parameter.requires_grad]
    if not parameters or not term.requires_grad:
        return False
    grads = torch.autograd.grad(term, parameters, retain_graph=True, allow_unused=True)
    return any(grad is not None and grad.abs().sum() > 0 for grad in grads)


@pytest.mark.parametrize(("name", "term"), sorted(ROUTING))
def test_gradient_routing_of_each_term(name: str, term: str) -> None:
    method = make_method(name)
    terms = method(make_batch(seed=1))
    for network_name, expects_gradient in ROUTING[(name, term)].items():
        network = getattr(method, network_name)
        assert gets_gradient(terms[term], network) == expects_gradient, f"{name}.{term} -> {network_name}"


def test_detached_teacher_gets_no_guidance_gradient_but_still_its_ce() -> None:
    method = make_method("lbgat-trades", {"alpha": 6.0, "detach_teacher": True})
    terms = method(make_batch(seed=1))
    assert gets_gradient(terms["mse"], method.student) and not gets_gradient(terms["mse"], method.teacher)
    assert gets_gradient(terms["ce_teacher"], method.teacher)


@pytest.mark.parametrize("name", ["bgat", "bgat-trades", "bgat-alp"])
def test_frozen_teacher_stays_in_eval_mode_and_is_never_updated(name: str) -> None:
    method = make_method(name)
    before = copy.deepcopy(method.teacher.state_dict())
    method.train()
    assert not any(module.training for module in method.teacher.modules())
    assert all(not parameter.requires_grad for parameter in method.teacher.parameters())
    assert list(method.trained_networks()) == ["student"]
    terms = method(make_batch(seed=4))
    terms["loss"].backward()
    assert all(parameter.grad is None for parameter in method.teacher.parameters())
    for key, value in method.teacher.state_dict().items():  # BN statistics untouched too
        assert torch.equal(value, before[key]), key


def test_separate_bn_shares_every_weight_but_batchnorm() -> None:
    method = make_method("lbgat-trades", {"alpha": 6.0, "separate_bn": True})
    student, teacher = method.student, method.teacher
    assert teacher.conv.weight is student.conv.weight and teacher.conv.bias is student.conv.bias
    assert teacher.fc.weight is student.fc.weight
    assert teacher.bn.weight is not student.bn.weight and teacher.bn.running_mean is not student.bn.running_mean
    terms = method(make_batch(seed=5))
    # The shared convolution learns from both paths; the BN layers each from their own.
    assert gets_gradient(terms["ce_teacher"], student)  # via the shared weights
    grads = torch.autograd.grad(terms["ce_teacher"], [student.bn.weight, teacher.bn.weight], allow_unused=True,
                                retain_graph=True)
    assert grads[0] is None and grads[1] is not None
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
    terms["loss"].backward()
    optimizer.step()
    assert teacher.conv.weight is student.conv.weight
    assert not torch.equal(teacher.bn.running_mean, student.bn.running_mean)


def test_separate_bn_needs_the_same_architecture() -> None:
    from lbgat.errors import ConfigError

    with pytest.raises(ConfigError, match="teacher to have the student's architecture"):
        create_method("lbgat", BNNet(), params={"separate_bn": True}, teacher=BNNet(width=6),
                      attack=TrainAttack(eps=EPS, step_size=STEP, steps=STEPS, start="uniform"))


def test_attack_objective_can_be_overridden() -> None:
    method = make_method("lbgat-alp")
    reference = copy.deepcopy(method)
    method.attack = TrainAttack(eps=EPS, step_size=STEP, steps=STEPS, start="uniform", objective="kl")
    batch = make_batch(seed=6)
    x_adv = method.adversarial(batch)
    expected = reference_attack(reference.student.eval(), batch, "kl", "uniform")
    torch.testing.assert_close(x_adv, expected)


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
    loss = reference_loss("lbgat-trades", reference.student, reference.teacher, batch, PARAMS["lbgat-trades"])["loss"]
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
