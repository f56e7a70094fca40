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
from lbgat.methods.teachers import FrozenEnsemble
from lbgat.runtime.rng import Stream
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


def label_smoothed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    log_probs = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    target = torch.full_like(log_probs, smoothing / logits.shape[1])
    target[torch.arange(len(labels)), labels] += 1 - smoothing
    return -(target * log_probs).sum(dim=1).mean()


def reference_guidance(logits_adv: torch.Tensor, logits_teacher: torch.Tensor, y: torch.Tensor,
                       params: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Spec 6.4 and the Table 1 knobs: the guidance term (MSE or KL) and an optional student CE."""
    teacher = logits_teacher.detach() if params.get("detach_teacher") else logits_teacher
    guidance = params.get("guidance", "mse")
    if guidance == "mse":
        if params.get("mse_reduction", "mean") == "mean":
            terms = {"mse": mse_mean_over_b_times_c(logits_adv, teacher)}
        else:
            terms = {"mse": ((logits_adv - teacher) ** 2).sum() / logits_adv.shape[0]}
    elif guidance == "kl":  # KL(P_r(x') || P_n(x))
        terms = {"kl_guidance": kl_batchmean(logits_adv, teacher)}
    else:  # KL(P_n(x) || P_r(x'))
        terms = {"kl_guidance": kl_batchmean(teacher, logits_adv)}
    loss = next(iter(terms.values()))
    if params.get("student_ce", 0.0):
        terms["ce_student"] = cross_entropy(logits_adv, y)
        loss = loss + params["student_ce"] * terms["ce_student"]
    return loss, terms


def with_regulariser(name: str, loss: torch.Tensor, terms: dict[str, torch.Tensor], logits_clean: torch.Tensor | None,
                     logits_adv: torch.Tensor, alpha: float) -> torch.Tensor:
    """A guided method's loss plus its +TRADES KL or +ALP pairing (recorded in ``terms``), by its name."""
    if name.endswith("-trades"):
        terms["kl"] = kl_batchmean(logits_clean, logits_adv)
        return loss + alpha * terms["kl"]
    if name.endswith("-alp"):
        terms["pairing"] = mse_mean_over_b_times_c(logits_adv, logits_clean)
        return loss + alpha * terms["pairing"]
    return loss


def reference_loss(name: str, student: nn.Module, teacher: nn.Module | None, batch: Batch,
                   params: dict) -> dict[str, torch.Tensor]:
    """The spec's formula for ``name``, with the forwards in the official order (BN statistics)."""
    x, y = batch.x, batch.y
    alpha, beta = params.get("alpha", 0.0), params.get("beta", 1.0)
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
    if name == "alp" and params.get("variant") == "original":  # spec 4.1: one forward over [x, x']
        x_adv = reference_attack(student, batch, "ce", "uniform")
        logits = student(torch.cat([x, x_adv]))
        ce = label_smoothed_cross_entropy(logits, torch.cat([y, y]), params.get("label_smoothing", 0.1))
        pairing = mse_mean_over_b_times_c(logits[:len(x)], logits[len(x):])
        return {"loss": ce + alpha * pairing, "ce_mixed": ce, "pairing": pairing}
    if name == "alp":  # spec 4.2: CE on x' only, MSE(M(x'), M(x))
        x_adv = reference_attack(student, batch, "ce", "uniform")
        logits_adv, logits_clean = student(x_adv), student(x)
        ce_adv = cross_entropy(logits_adv, y)
        pairing = mse_mean_over_b_times_c(logits_adv, logits_clean)
        return {"loss": ce_adv + alpha * pairing, "ce_adv": ce_adv, "pairing": pairing}
    if name in ("lbgat-trades", "lbgat", "lbgat-alp"):
        # spec 6.2 / 6.3 / 8: student(x'), [student(x)], teacher(x)
        kl_attack = name == "lbgat-trades"
        x_adv = reference_attack(student, batch, "kl" if kl_attack else "ce", "normal" if kl_attack else "uniform")
        logits_adv = student(x_adv)
        logits_clean = student(x) if name != "lbgat" else None
        logits_teacher = teacher(x)
        guidance, terms = reference_guidance(logits_adv, logits_teacher, y, params)
        terms["ce_teacher"] = cross_entropy(logits_teacher, y)
        loss = guidance + beta * terms["ce_teacher"]
        return {"loss": with_regulariser(name, loss, terms, logits_clean, logits_adv, alpha), **terms}
    if name in ("bgat", "bgat-trades", "bgat-alp"):  # spec 5: frozen teacher, no teacher CE
        kl_attack = name == "bgat-trades"
        x_adv = reference_attack(student, batch, "kl" if kl_attack else "ce", "normal" if kl_attack else "uniform")
        logits_adv = student(x_adv)
        logits_clean = student(x) if name != "bgat" else None
        with torch.no_grad():
            logits_teacher = torch.stack([member(x) for member in teacher.members]).mean(0)
        loss, terms = reference_guidance(logits_adv, logits_teacher, y, params)
        return {"loss": with_regulariser(name, loss, terms, logits_clean, logits_adv, alpha), **terms}
    if name == "mart":  # spec 11.2: CE-PGD from x + 0.001 N; f(x), f(x') in train mode; nothing detached
        x_adv = reference_attack(student, batch, "ce", "normal")
        logits_clean, logits_adv = student(x), student(x_adv)
        probs_adv, probs_clean = logits_adv.softmax(1), logits_clean.softmax(1)
        others = probs_adv.detach().clone()
        others[torch.arange(len(y)), y] = -1.0
        wrong = others.argmax(1)  # the most likely wrong class under p'
        bce = cross_entropy(logits_adv, y) - torch.log(1.0001 - probs_adv + 1e-12)[torch.arange(len(y)), wrong].mean()
        kl_per_example = (probs_clean * (probs_clean.log() - torch.log(probs_adv + 1e-12))).sum(1)
        kl = (kl_per_example * (1.0000001 - probs_clean[torch.arange(len(y)), y])).mean()
        return {"loss": bce + params.get("beta", 6.0) * kl, "bce": bce, "kl": kl}
    if name == "iseat":  # spec 10.1 without AWP (gamma 0): one train-mode clean forward serves both
        terms, _ = reference_iseat(student, batch, params)
        return terms
    raise AssertionError(name)


def iseat_stage_value(values: list[float], epoch: int, stage_epochs: list[int]) -> float:
    stage = sum(epoch >= start for start in stage_epochs)
    return values[min(stage, len(values) - 1)] if values else 0.0


def reference_awp_directions(network: nn.Module, ascent_loss, eta: float) -> dict[str, torch.Tensor]:
    """Spec 10.1 step 3: a proxy copy takes one SGD step of size eta up the loss; per weight tensor of >= 2
    dimensions v = ||w|| * d / ||d||, d = proxy - model."""
    proxy = copy.deepcopy(network).train()
    loss = -ascent_loss(proxy)
    grads = torch.autograd.grad(loss, list(proxy.parameters()), allow_unused=True)
    with torch.no_grad():
        for parameter, grad in zip(proxy.parameters(), grads, strict=True):
            if grad is not None:
                parameter -= eta * grad
    moved = dict(proxy.named_parameters())
    directions = {}
    for name, weight in network.named_parameters():
        if weight.dim() >= 2 and "weight" in name:
            change = moved[name].detach() - weight.detach()
            directions[name] = weight.detach().norm() * change / (change.norm() + 1e-20)
    return directions


def reference_iseat(student: nn.Module, batch: Batch, params: dict
                    ) -> tuple[dict[str, torch.Tensor], nn.Module | None]:
    """Spec 10.1 (all in train mode, no random start), with AWP when gamma != 0: then the clean logits of
    the regulariser come from ``unperturbed``, a copy of the student taken before the perturbation (its
    gradients are the caller's to add, as the official code does)."""
    x, y, size = batch.x, batch.y, len(batch)
    stages = params.get("stage_epochs", [100, 150])
    lam = iseat_stage_value(params.get("lam", [0.0, 0.1]), batch.epoch, stages)
    gamma = iseat_stage_value(params.get("gamma", [7e-3]), batch.epoch, stages)
    student.train()
    clean = x.clone().requires_grad_(True)
    logits_clean = student(clean)
    unperturbed = copy.deepcopy(student) if gamma and lam else None
    ce_clean = F.cross_entropy(logits_clean, y, reduction="none")
    first = torch.autograd.grad(ce_clean.mean(), clean, retain_graph=True)[0]
    delta = torch.zeros_like(x)
    for index in range(STEPS):
        adv = torch.clamp(x + delta, 0, 1).requires_grad_(True)
        grad = first if index == 0 else torch.autograd.grad(cross_entropy(student(adv), y), adv)[0]
        delta = torch.clamp(delta + STEP * grad.sign(), -EPS, EPS)
        delta = torch.clamp(x + delta, 0, 1) - x
    x_adv = (x + delta).detach()
    if gamma:
        directions = reference_awp_directions(student, lambda net: cross_entropy(net(x_adv), y),
                                              params.get("awp_eta", 0.01))
        with torch.no_grad():
            for name, parameter in student.named_parameters():
                if name in directions:
                    parameter += gamma * directions[name]
    logits_adv = student(x_adv)
    ce_adv = F.cross_entropy(logits_adv, y, reduction="none")
    loss = ce_adv.mean()
    smoothness = torch.zeros(())
    if lam:
        if unperturbed is not None:
            logits_clean = unperturbed(clean)
        squared = ((logits_adv - logits_clean) ** 2).sum(1)
        ranks = torch.empty(size)
        ranks[torch.argsort((ce_adv - ce_clean).detach())] = torch.arange(1, size + 1, dtype=torch.float32)
        smoothness = (ranks / size * squared).sum() / size
        loss = loss + lam * smoothness
    return {"loss": loss, "ce_adv": ce_adv.mean(), "smoothness": smoothness}, unperturbed


# --- fixtures ----------------------------------------------------------------------------------

PARAMS = {"natural": {}, "pgd-at": {}, "trades": {"alpha": 6.0}, "lbgat-trades": {"alpha": 6.0, "beta": 1.0},
          "lbgat": {"beta": 1.0}, "alp": {"alpha": 1.0}, "lbgat-alp": {"alpha": 1.0, "beta": 1.0}, "bgat": {},
          "bgat-trades": {"alpha": 2.0}, "bgat-alp": {"alpha": 1.0}, "mart": {"beta": 6.0},
          "iseat": {"lam": [0.5], "gamma": [0.0]}}
METHOD_NAMES = sorted(PARAMS)


def make_batch(seed: int = 0, size: int = 6) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(size, 3, 8, 8, generator=generator)
    y = torch.randint(0, NUM_CLASSES, (size,), generator=generator)
    return Batch(x, y, torch.arange(10, 10 + size), epoch=2, seed=5)


def make_method(name: str, params: dict | None = None):
    torch.manual_seed(0)
    params = PARAMS[name] if params is None else params
    student = BNNet()
    teacher = None
    if get_method(name).frozen_teacher:  # a natural ensemble, trained elsewhere
        teacher = FrozenEnsemble([BNNet(width=6), BNNet(width=3)])
    elif get_method(name).uses_teacher:
        teacher = BNNet(width=4 if params.get("separate_bn") else 6)
    attack = TrainAttack(eps=EPS, step_size=STEP, steps=STEPS, start=get_method(name).default_start,
                         bn_mode=get_method(name).default_bn_mode)
    method = create_method(name, student, params=params, attack=attack, teacher=teacher)
    return method.train()


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
