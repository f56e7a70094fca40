"""The sanity checks of every report: each one passes on an honest model and flags the fault it is for."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lbgat.data import from_tensors
from lbgat.evaluate import checks as checks_module
from lbgat.evaluate.checks import (
    CheckInputs,
    batch_independence_check,
    run_checks,
    strength_check,
)
from lbgat.evaluate.runner import EvalRequest, _check_inputs, plan


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


class Quantised(nn.Module):
    """A deliberately gradient-masked defence: inputs rounded to 8 levels, so every input gradient is 0."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 7) / 7)


class AlwaysTrainModeBN(SmallNet):
    """BatchNorm that normalises with the batch's statistics even in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.batch_norm(self.conv(x), None, None, self.bn.weight, self.bn.bias, training=True)
        return self.fc(F.relu(h).flatten(1))


def inputs_for(model: nn.Module, count: int = 24, eps: float = 0.03, step_size: float = 0.01) -> CheckInputs:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(count, 3, 8, 8, generator=generator)
    with torch.no_grad():
        y = model.eval()(x).argmax(1)
    return CheckInputs(x, y, torch.arange(count), eps, step_size, "Linf", seed=0)


def verdicts(results) -> dict[str, str]:
    return {result.name: result.verdict for result in results}


def test_every_check_passes_on_an_honest_model() -> None:
    model = SmallNet().eval()
    results = verdicts(run_checks(model, inputs_for(model), aa=None, strength=True))
    assert results.pop("square vs white-box") == "skipped"  # AutoAttack did not run
    assert set(results.values()) == {"pass"}, results
    assert not model.training


def test_a_gradient_masked_model_is_flagged() -> None:
    model = Quantised(SmallNet()).eval()
    results = {result.name: result for result in run_checks(model, inputs_for(model), aa=None, strength=False)}
    assert results["zero gradients"].verdict == "warn"
    assert "zero gradient" in results["zero gradients"].detail


def test_pgd20_that_a_stronger_attack_beats_by_far_is_called_unreliable() -> None:
    # A linear model whose worst case sits at the corner of the eps-ball, with steps so small that
    # 20 of them cannot get there but 100 can: PGD-20 overstates robustness here.
    features = 3 * 8 * 8
    weight = torch.where(torch.arange(features) % 2 == 0, 1.0, -1.0)
    eps, step_size = 0.03, 0.0005
    model = nn.Linear(features, 2)
    with torch.no_grad():
        model.weight.copy_(torch.stack([weight, torch.zeros(features)]))
        model.bias.zero_()
    flat = nn.Sequential(nn.Flatten(), model).eval()
    x = 0.2 + 0.6 * torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    # shift each image so that its margin is 60% of what the corner of the ball removes
    margin = x.flatten(1) @ weight
    x = x - ((margin - 0.6 * eps * features) / features)[:, None, None, None] * weight.view(3, 8, 8)
    y = torch.zeros(16, dtype=torch.int64)
    result = strength_check(flat, CheckInputs(x, y, torch.arange(16), eps, step_size, "Linf", seed=0))
    assert result.verdict == "warn" and "UNRELIABLE" in result.detail
    assert "PGD-20 100.00%, PGD-100x5 0.00%" in result.detail


def test_a_longer_attack_from_other_starts_missing_a_point_is_not_a_bug(monkeypatch) -> None:
    """The demo's LBGAT row once 'failed' with PGD-40 63% vs PGD-100x5 64% on 100 examples: each restart
    missed one point that PGD-40's own start found. The worst case per example over all six attacks is
    what the stronger attack achieves, so that is a pass."""
    model = SmallNet().eval()
    inputs = inputs_for(model, count=100)

    def one_point_apart(model, inputs, steps, stream):
        robust = torch.zeros(len(inputs.y), dtype=torch.bool)
        robust[:63] = True
        if steps > 20:
            robust[63] = True  # found by PGD-20 from its start, missed by every restart
        return robust

    monkeypatch.setattr(checks_module, "_robust_under_pgd", one_point_apart)
    result = strength_check(model, CheckInputs(inputs.x, inputs.y, inputs.index, 0.2, 0.05, "Linf", 0))
    assert result.verdict == "pass", result.detail
    assert result.measured["strong_accuracy"] == result.measured["tested_accuracy"] == 63 / len(inputs.y)
    assert result.measured["best_restart_accuracy"] == 64 / len(inputs.y)


def test_a_stronger_attack_scoring_higher_is_a_bug(monkeypatch) -> None:
    model = SmallNet().eval()
    inputs = inputs_for(model)
    real = checks_module._robust_under_pgd

    def weaker_with_more_steps(model, inputs, steps, stream):
        robust = real(model, inputs, steps, stream)
        return torch.ones_like(robust) if steps > 20 else robust

    monkeypatch.setattr(checks_module, "_robust_under_pgd", weaker_with_more_steps)
    inputs = CheckInputs(inputs.x, inputs.y, inputs.index, 0.2, 0.05, "Linf", 0)
    result = strength_check(model, inputs)
    assert result.verdict == "fail" and "attack has a bug" in result.detail


def test_batch_dependent_logits_are_a_failure() -> None:
    model = AlwaysTrainModeBN().eval()
    result = batch_independence_check(model, inputs_for(SmallNet()))
    assert result.verdict == "fail" and "depend on the batch" in result.detail


def test_probabilities_instead_of_logits_are_flagged() -> None:
    model = nn.Sequential(SmallNet(), nn.Softmax(dim=1)).eval()
    results = {result.name: result for result in run_checks(model, inputs_for(model), aa=None, strength=False)}
    assert results["softmax outputs"].verdict == "warn"


def corner_model_and_images(shape: tuple[int, int, int], eps: float, fraction: float, count: int = 16
                            ) -> tuple[nn.Module, torch.Tensor]:
    """A linear model and images (all of class 0) that an Linf perturbation of ``fraction * eps`` per
    pixel, towards the corner of the ball, just misclassifies: PGD must travel that far to succeed."""
    features = shape[0] * shape[1] * shape[2]
    weight = torch.where(torch.arange(features) % 2 == 0, 1.0, -1.0)
    linear = nn.Linear(features, 2)
    with torch.no_grad():  # scaled so that the logits stay small enough for cross-entropy to have a gradient
        linear.weight.copy_(torch.stack([weight * 4 / (eps * features), torch.zeros(features)]))
        linear.bias.zero_()
    x = 0.45 + 0.1 * torch.rand(count, *shape, generator=torch.Generator().manual_seed(3))
    margin = x.flatten(1) @ weight
    x = x - ((margin - fraction * eps * features) / features)[:, None, None, None] * weight.view(*shape)
    return nn.Sequential(nn.Flatten(), linear).eval(), x


@pytest.mark.parametrize(("attacks", "verdict"), [("clean,pgd", "pass"), ("clean,pgd5", "warn")])
def test_strength_check_tests_the_reports_own_pgd(attacks: str, verdict: str) -> None:
    """The demo reports PGD-40 on mnist-5k (eps 0.3, steps of 0.01), which
    reaches the corner of the ball where PGD-20 cannot; the check must test PGD-40, not a fixed PGD-20,
    and so not call it unreliable. A genuinely weak attack (PGD-5) is still called unreliable."""
    shape = (1, 16, 16)
    model, x = corner_model_and_images(shape, eps=0.3, fraction=0.75)
    labels = torch.zeros(len(x), dtype=torch.int64)
    dataset = from_tensors(x, labels, x, labels, classes=["0", "1"])
    request = EvalRequest(checkpoint=Path("unused.pt"), attacks=attacks, check_n=len(x))
    plan_ = plan(request, dataset)
    inputs = _check_inputs(request, plan_, dataset, torch.device("cpu"))
    reference = plan_.attacks[1]
    assert (inputs.reference_steps, inputs.step_size, inputs.eps) == (reference.steps, 0.01, 0.3)
    result = strength_check(model, inputs)
    assert result.name == f"PGD-100 x 5 restarts vs PGD-{reference.steps}"
    assert result.verdict == verdict, result.detail
    if verdict == "pass":
        assert "UNRELIABLE" not in result.detail and "PGD-40 0.00%" in result.detail
    else:
        assert f"PGD-{reference.steps} IS UNRELIABLE FOR THIS MODEL" in result.detail
    # what the old check did (a fixed PGD-20) really is too weak here: the report's attack matters
    fixed_pgd20 = CheckInputs(inputs.x, inputs.y, inputs.index, inputs.eps, inputs.step_size, "Linf", 0)
    assert strength_check(model, fixed_pgd20).verdict == "warn"


def test_strength_check_reference_is_the_strongest_pgd_and_longer_attacks_get_longer_checks() -> None:
    """With pgd20 and pgd200 in a report the check tests PGD-200 against a
    stronger attack of at least as many steps."""
    model = SmallNet().eval()
    base = inputs_for(model, count=4)
    inputs = CheckInputs(base.x, base.y, base.index, base.eps, base.step_size, "Linf", 0, reference_steps=200)
    assert strength_check(model, inputs).name == "PGD-200 x 5 restarts vs PGD-200"
    labels = torch.zeros(4, dtype=torch.int64)
    dataset = from_tensors(base.x, labels, base.x, labels, classes=[str(i) for i in range(10)])
    request = EvalRequest(checkpoint=Path("unused.pt"), attacks="clean,pgd20,cw50,pgd200,pgd200", check_n=4)
    with pytest.raises(Exception, match="listed twice"):
        plan(request, dataset)
    request = EvalRequest(checkpoint=Path("unused.pt"), attacks="clean,pgd20,cw50,pgd200", check_n=4)
    assert _check_inputs(request, plan(request, dataset), dataset, torch.device("cpu")).reference_steps == 200
