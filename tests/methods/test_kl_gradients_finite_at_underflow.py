"""Where a softmax probability underflows to exactly 0 (fp32: a logit gap above about 104),
every KL term's gradient is its finite limit (p log p -> 0), not NaN; where none is 0, every number is
bit for bit what the plain ``F.softmax`` formulas gave.

The limit is computed independently: the same loss in float64, where logits 150 apart do not
underflow (exp(-150) ~ 7e-66), from the formulas of tests/helpers/method_formulas.py, on the same x'."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.method_formulas import EPS, STEP, STEPS, cross_entropy, reference_guidance
from helpers.method_formulas import kl_batchmean as reference_kl
from lbgat.attacks import kl_from_clean_sum, pgd
from lbgat.data.loader import Batch
from lbgat.methods import TrainAttack, create_method, mart, trades
from lbgat.methods.mart import misclassification_aware_kl
from lbgat.methods.trades import kl_batchmean
from lbgat.methods.underflow import softmax_with_limit

NUM_CLASSES = 5
# Two classes within a few logits of each other, three more than 140 below: in fp32 their softmax
# probabilities are exactly 0 on every row, yet the gradient is carried by the first two.
BIAS = (150.0, 147.0, 0.0, -4.0, 6.0)


def linear_classifier(seed: int, bias: tuple[float, ...] = BIAS) -> nn.Module:
    torch.manual_seed(seed)
    network = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, NUM_CLASSES))
    with torch.no_grad():
        network[1].weight.mul_(8.0)  # logits vary by a few units with the image, so x' differs from x
        network[1].bias.copy_(torch.tensor(bias))
    return network


def make_batch(size: int = 8) -> Batch:
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(size, 3, 4, 4, generator=generator)
    y = torch.randint(0, NUM_CLASSES, (size,), generator=generator)
    return Batch(x, y, torch.arange(size), epoch=0, seed=1)


def make_method(name: str, params: dict | None = None, bias: tuple[float, ...] = BIAS):
    teacher = linear_classifier(1, bias) if name.startswith("lbgat") else None
    attack = TrainAttack(eps=EPS, step_size=STEP, steps=STEPS, start="normal")
    return create_method(name, linear_classifier(0, bias), params=params or {}, attack=attack, teacher=teacher).train()


def reference_terms(name: str, params: dict, student: nn.Module, teacher: nn.Module | None, batch: Batch,
                    x_adv: torch.Tensor) -> torch.Tensor:
    """The loss of one step at a given x' (the formulas of tests/helpers/method_formulas.py), in the networks' dtype."""
    x, y = batch.x.to(x_adv.dtype), batch.y
    if name == "trades":
        return cross_entropy(student(x), y) + 6.0 * reference_kl(student(x), student(x_adv))
    if name == "mart":
        logits_clean, logits_adv = student(x), student(x_adv)
        probs_adv, probs_clean = logits_adv.softmax(1), logits_clean.softmax(1)
        others = probs_adv.detach().clone()
        others[torch.arange(len(y)), y] = -1.0
        wrong = others.argmax(1)
        bce = cross_entropy(logits_adv, y) - torch.log(1.0001 - probs_adv + 1e-12)[torch.arange(len(y)), wrong].mean()
        kl_per_example = (probs_clean * (probs_clean.log() - torch.log(probs_adv + 1e-12))).sum(1)
        return bce + 6.0 * (kl_per_example * (1.0000001 - probs_clean[torch.arange(len(y)), y])).mean()
    assert name == "lbgat-trades" and teacher is not None
    logits_adv, logits_teacher = student(x_adv), teacher(x)
    guidance, _ = reference_guidance(logits_adv, logits_teacher, y, params)
    return guidance + cross_entropy(logits_teacher, y) + 6.0 * reference_kl(student(x), logits_adv)


def gradients(method) -> list[torch.Tensor]:
    return [parameter.grad.clone() for parameter in method.parameters()]


CASES = [("trades", {}), ("mart", {}), ("lbgat-trades", {}), ("lbgat-trades", {"guidance": "kl"}),
         ("lbgat-trades", {"guidance": "kl-reverse"})]


@pytest.mark.parametrize(("name", "params"), CASES)
def test_one_step_at_logits_150_apart_has_the_finite_limit_as_its_gradient(name: str, params: dict) -> None:
    method = make_method(name, params)
    batch = make_batch()
    with torch.no_grad():
        clean = method.student(batch.x)
    assert (F.softmax(clean, dim=1) == 0).sum(dim=1).min() >= 3, "every row must underflow in fp32"
    reference = copy.deepcopy(method).double()
    x_adv = method.adversarial(batch)
    assert torch.isfinite(x_adv).all()
    method.loss_terms(batch, x_adv)["loss"].backward()
    ours = gradients(method)
    assert all(torch.isfinite(grad).all() for grad in ours), name
    # The limit: float64, where nothing underflows, on the same x'.
    reference_terms(name, params, reference.student, reference.teacher, batch, x_adv.double()).backward()
    for grad, limit in zip(ours, gradients(reference), strict=True):
        torch.testing.assert_close(grad.double(), limit, rtol=1e-4, atol=1e-4 * limit.abs().max().item(), msg=name)


@pytest.mark.parametrize("name", ["trades", "mart", "lbgat-trades"])
def test_without_the_limit_the_same_step_is_nan(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The setting above does reach the underflow: with the plain softmax (as lbgat computed it before) it is NaN."""
    monkeypatch.setattr(trades, "softmax_with_limit", F.softmax)
    monkeypatch.setattr(mart, "softmax_with_limit", F.softmax)
    method = make_method(name)
    batch = make_batch()
    method.loss_terms(batch, method.adversarial(batch))["loss"].backward()
    assert not all(torch.isfinite(grad).all() for grad in gradients(method))


def test_the_kl_attack_is_finite_there_too() -> None:
    """The attack's KL target is computed under no_grad (attacks/pgd.py), so only d/d(logits_adv) =
    softmax(logits_adv) - p flows: finite with zeros in p, and equal to that formula in float64."""
    model = linear_classifier(0).eval()
    batch = make_batch()
    with torch.no_grad():
        clean_probs = F.softmax(model(batch.x), dim=1)
    assert (clean_probs == 0).any()
    logits_adv = model(batch.x + 0.01).detach().requires_grad_()
    (grad,) = torch.autograd.grad(kl_from_clean_sum(logits_adv, clean_probs), logits_adv)
    limit = F.softmax(logits_adv.double(), dim=1) - F.softmax(copy.deepcopy(model).double()(batch.x.double()), dim=1)
    # fp32 logits near 150 are exact to about 1e-5 (their spacing), and so are the probabilities
    torch.testing.assert_close(grad.double(), limit, rtol=0, atol=1e-5)
    x_adv = pgd(model, batch.x, None, eps=EPS, step_size=STEP, steps=STEPS, objective="kl", start="normal",
                rng=batch.rng)
    assert torch.isfinite(x_adv).all()
    assert (x_adv - batch.x).abs().max() > 0.5 * EPS  # the sign steps moved it (not a zero gradient)


# --- where no probability is 0: bit for bit the plain-softmax formulas -------------------------------

def kl_batchmean_before(logits_target: torch.Tensor, logits_input: torch.Tensor) -> torch.Tensor:
    summed = F.kl_div(F.log_softmax(logits_input, dim=1), F.softmax(logits_target, dim=1), reduction="sum")
    return summed / logits_target.shape[0]


def misclassification_aware_kl_before(logits_clean: torch.Tensor, logits_adv: torch.Tensor,
                                      y: torch.Tensor) -> torch.Tensor:
    probs_adv = F.softmax(logits_adv, dim=1)
    probs_clean = F.softmax(logits_clean, dim=1)
    true_probs = torch.gather(probs_clean, 1, y.unsqueeze(1).long()).squeeze()
    kl = F.kl_div(torch.log(probs_adv + 1e-12), probs_clean, reduction="none").sum(dim=1)
    return (1.0 / logits_clean.shape[0]) * torch.sum(kl * (1.0000001 - true_probs))


def value_and_gradients(function, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    leaves = [tensor.detach().clone().requires_grad_(tensor.is_floating_point()) for tensor in inputs]
    value = function(*leaves)
    return (value.detach(), *torch.autograd.grad(value, [leaf for leaf in leaves if leaf.requires_grad]))


@pytest.mark.parametrize("scale", [0.1, 1.0, 5.0, 12.0])
def test_where_nothing_underflows_every_bit_is_as_before(scale: float) -> None:
    generator = torch.Generator().manual_seed(int(scale * 10))
    target = torch.randn(128, 10, generator=generator) * scale
    inputs = torch.randn(128, 10, generator=generator) * scale
    labels = torch.randint(0, 10, (128,), generator=generator)
    assert (F.softmax(target, dim=1) > 0).all()
    for new, old, args in ((kl_batchmean, kl_batchmean_before, (target, inputs)),
                           (misclassification_aware_kl, misclassification_aware_kl_before, (target, inputs, labels))):
        for ours, before in zip(value_and_gradients(new, *args), value_and_gradients(old, *args), strict=True):
            assert torch.equal(ours, before), new.__name__


def test_the_hook_changes_only_entries_whose_probability_is_zero() -> None:
    logits = torch.tensor([[0.0, 1.0, -200.0], [3.0, 2.0, 1.0]], requires_grad=True)
    probs = softmax_with_limit(logits)
    upstream = torch.tensor([[0.5, -1.0, float("nan")], [0.25, float("inf"), 2.0]])
    (grad,) = torch.autograd.grad(probs, logits, upstream)
    assert torch.isfinite(grad[0]).all()  # the NaN sat where p == 0: replaced by the limit
    assert not torch.isfinite(grad[1]).any()  # an infinity where p > 0 is a real one: left as it is
    expected = F.softmax(logits[:1].detach(), dim=1)
    expected = expected * (upstream[0, :2].new_tensor([0.5, -1.0, 0.0]) - (expected[0, :2] * upstream[0, :2]).sum())
    torch.testing.assert_close(grad[0], expected[0])
    plain = torch.tensor([1.0, 2.0], requires_grad=False)
    assert torch.equal(softmax_with_limit(plain, dim=0), F.softmax(plain, dim=0))  # no graph: no hook
