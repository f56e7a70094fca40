"""Independent computations of every method's loss, written from the spec and not from the library,
and the small network, batch and method the method tests share."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from helpers.references import official_attack
from lbgat.data.loader import Batch
from lbgat.methods import TrainAttack, create_method, get_method
from lbgat.methods.teachers import FrozenEnsemble
from lbgat.runtime.rng import Stream

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
