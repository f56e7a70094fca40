"""Attacks: constraints (eps-ball, [0, 1], modes restored) and strength where the optimum is known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers.method_formulas import BNNet
from helpers.references import official_attack
from lbgat.attacks import cw_margin_sum, fgsm, model_mode, pgd
from lbgat.runtime.rng import ExampleRNG

TOLERANCE = 1e-6


class Linear(nn.Module):
    """f(x) = W flatten(x) + b: the worst case of an L-inf perturbation has a closed form."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


def binary_linear(seed: int = 0, features: int = 48) -> Linear:
    generator = torch.Generator().manual_seed(seed)
    return Linear(torch.randn(2, features, generator=generator), torch.randn(2, generator=generator))


def interior_images(count: int, eps: float, shape=(3, 4, 4), seed: int = 1) -> torch.Tensor:
    """Images whose eps-ball lies inside [0, 1], so the box never cuts the optimal perturbation."""
    generator = torch.Generator().manual_seed(seed)
    return eps + (1 - 2 * eps) * torch.rand(count, *shape, generator=generator)


def margins(model: Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    return logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, (1 - y)[:, None]).squeeze(1)


@pytest.mark.parametrize("objective", ["ce", "cw"])
@pytest.mark.parametrize("start", ["uniform", "none"])
def test_pgd_reaches_the_closed_form_worst_case_of_a_linear_model(objective: str, start: str) -> None:
    eps = 0.05
    model = binary_linear()
    x = interior_images(32, eps)
    y = torch.randint(0, 2, (32,), generator=torch.Generator().manual_seed(2))
    weight_gap = (model.weight[0] - model.weight[1]).abs().sum().item()
    # For two classes the worst case lowers the margin by exactly eps * ||w_y - w_other||_1.
    worst = margins(model, x, y) - eps * weight_gap
    x_adv = pgd(model, x, y, eps=eps, step_size=eps / 4, steps=20, objective=objective, start=start)
    assert torch.allclose(margins(model, x_adv, y), worst, atol=1e-4)


def test_fgsm_is_optimal_for_a_linear_model_and_accuracy_matches_the_analytic_robust_accuracy() -> None:
    eps = 0.05
    model = binary_linear(seed=3)
    x = interior_images(200, eps, seed=4)
    y = model(x).argmax(1)  # correctly classified clean points, so robustness is decided by the margin
    weight_gap = (model.weight[0] - model.weight[1]).abs().sum().item()
    expected_robust = margins(model, x, y) > eps * weight_gap
    x_adv = fgsm(model, x, y, eps=eps)
    assert torch.equal(model(x_adv).argmax(1) == y, expected_robust)
    assert 0 < int(expected_robust.sum()) < len(y)  # the test discriminates


@pytest.mark.parametrize("objective", ["ce", "cw", "kl"])
@pytest.mark.parametrize("start", ["uniform", "normal", "none"])
def test_pgd_stays_in_the_eps_ball_and_in_the_unit_box(objective: str, start: str) -> None:
    torch.manual_seed(0)
    model = BNNet()
    x = torch.rand(6, 3, 8, 8)
    x[0] = 0.0
    x[1] = 1.0  # boxes that cut the ball
    y = torch.randint(0, 5, (6,))
    eps = 0.1
    x_adv = pgd(model, x, y, eps=eps, step_size=0.03, steps=5, objective=objective, start=start, start_std=0.05)
    assert (x_adv - x).abs().max() <= eps + TOLERANCE
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not x_adv.requires_grad


def test_eps_zero_returns_the_clean_images_exactly() -> None:
    torch.manual_seed(0)
    model = BNNet().eval()
    x = torch.rand(4, 3, 8, 8)
    y = torch.randint(0, 5, (4,))
    for start in ("uniform", "none"):
        assert torch.equal(pgd(model, x, y, eps=0.0, step_size=0.003, steps=20, start=start), x)
    assert torch.equal(fgsm(model, x, y, eps=0.0), x)


def test_zero_steps_gives_the_projected_start() -> None:
    x = torch.full((2, 3, 4, 4), 0.99)
    x_adv = pgd(binary_linear(), x, torch.tensor([0, 1]), eps=0.1, step_size=0.01, steps=0, start="uniform")
    assert (x_adv - x).abs().max() <= 0.1 + TOLERANCE and x_adv.max() <= 1


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_model_modes_are_restored_per_module(bn_mode: str) -> None:
    model = BNNet().train()
    model.bn.eval()  # a deliberately mixed state must survive the attack
    seen: list[bool] = []
    model.bn.register_forward_hook(lambda module, inputs, output: seen.append(module.training))
    x, y = torch.rand(4, 3, 8, 8), torch.randint(0, 5, (4,))
    pgd(model, x, y, eps=0.03, step_size=0.01, steps=3, bn_mode=bn_mode)
    assert set(seen) == {bn_mode == "train"}
    assert model.training and not model.bn.training and model.conv.training


def test_eval_mode_attack_leaves_batchnorm_statistics_alone() -> None:
    model = BNNet().train()
    before = model.bn.running_mean.clone()
    pgd(model, torch.rand(4, 3, 8, 8), torch.randint(0, 5, (4,)), eps=0.03, step_size=0.01, steps=3)
    assert torch.equal(model.bn.running_mean, before)
    pgd(model, torch.rand(4, 3, 8, 8), torch.randint(0, 5, (4,)), eps=0.03, step_size=0.01, steps=3, bn_mode="train")
    assert not torch.equal(model.bn.running_mean, before)


def test_attacks_leave_parameter_gradients_untouched() -> None:
    model = BNNet()
    pgd(model, torch.rand(4, 3, 8, 8), torch.randint(0, 5, (4,)), eps=0.03, step_size=0.01, steps=2)
    assert all(parameter.grad is None for parameter in model.parameters())


def test_random_start_of_an_example_does_not_depend_on_its_batch() -> None:
    torch.manual_seed(0)
    model = BNNet().eval()
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 5, (8,))
    index = torch.arange(100, 108)
    whole = pgd(model, x, y, eps=0.03, step_size=0.01, steps=3, rng=ExampleRNG(7, 0, index))
    halves = [pgd(model, x[part], y[part], eps=0.03, step_size=0.01, steps=3, rng=ExampleRNG(7, 0, index[part]))
              for part in (slice(0, 3), slice(3, 8))]
    assert torch.equal(whole, torch.cat(halves))


def test_kl_attack_with_cached_clean_prediction_equals_the_official_recomputing_one() -> None:
    torch.manual_seed(0)
    model = BNNet().train()
    x = torch.rand(8, 3, 8, 8)
    rng = ExampleRNG(3, 1, torch.arange(8))
    start = 0.001 * rng.normal(4, (3, 8, 8))
    ours = pgd(model, x, None, eps=0.031, step_size=0.007, steps=10, objective="kl", start="normal", rng=rng,
               stream=4)
    official = official_attack(model, x, None, start, eps=0.031, step_size=0.007, steps=10, objective="kl")
    assert torch.equal(ours, official)


def test_cw_margin_with_kappa_clamps_only_beyond_minus_kappa() -> None:
    logits = torch.tensor([[5.0, 1.0, 0.0], [0.0, 60.0, 1.0]])
    labels = torch.tensor([0, 0])
    # margins z_y - max_other: 4 and -60; with kappa 50 the second is clamped to 0.
    assert cw_margin_sum(logits, labels, kappa=50.0).item() == pytest.approx(-(4 + 50))
    assert cw_margin_sum(logits, labels, kappa=0.0).item() == pytest.approx(-4)


def test_model_mode_restores_after_an_exception() -> None:
    model = BNNet().train()
    with pytest.raises(RuntimeError), model_mode(model, "eval"):
        raise RuntimeError("boom")
    assert all(module.training for module in model.modules())


@pytest.mark.parametrize("kwargs", [{"eps": -0.1}, {"steps": -1}, {"step_size": -0.1}, {"objective": "l2"},
                                    {"start": "gauss"}])
def test_invalid_settings_are_rejected(kwargs) -> None:
    settings = {"eps": 0.03, "step_size": 0.01, "steps": 2} | kwargs
    with pytest.raises(ValueError):
        pgd(binary_linear(), torch.rand(2, 3, 4, 4), torch.tensor([0, 1]), **settings)


@pytest.mark.parametrize("objective", ["ce", "cw"])
def test_l2_pgd_reaches_the_closed_form_worst_case_of_a_linear_model(objective: str) -> None:
    eps = 0.5
    model = binary_linear(seed=5)
    x = interior_images(32, eps, seed=6)  # every coordinate at least eps from the box, so the L2 ball fits
    y = torch.randint(0, 2, (32,), generator=torch.Generator().manual_seed(7))
    # For two classes the L2 worst case lowers the margin by exactly eps * ||w_y - w_other||_2.
    weight_gap = (model.weight[0] - model.weight[1]).norm().item()
    worst = margins(model, x, y) - eps * weight_gap
    x_adv = pgd(model, x, y, eps=eps, step_size=eps / 4, steps=50, objective=objective, start="uniform",
                rng=ExampleRNG(0, 0, torch.arange(32)), norm="L2")
    # On the sphere a fixed step turns the iterate towards the optimum geometrically, not in one step.
    achieved = margins(model, x_adv, y)
    assert (achieved >= worst - 1e-4).all()
    assert torch.allclose(achieved, worst, atol=1e-3 * eps * weight_gap)


@pytest.mark.parametrize("start", ["uniform", "none"])
def test_l2_attacks_stay_in_the_l2_ball_and_in_the_unit_box(start: str) -> None:
    torch.manual_seed(0)
    model = BNNet()
    x = torch.rand(6, 3, 8, 8)
    x[0] = 0.0
    x[1] = 1.0
    y = torch.randint(0, 5, (6,))
    eps = 0.5
    x_adv = pgd(model, x, y, eps=eps, step_size=0.2, steps=5, start=start, norm="L2",
                rng=ExampleRNG(0, 0, torch.arange(6)))
    assert (x_adv - x).flatten(1).norm(dim=1).max() <= eps * (1 + 1e-5)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    start_only = pgd(model, x, y, eps=eps, step_size=0.2, steps=0, start="uniform", norm="L2",
                     rng=ExampleRNG(0, 0, torch.arange(6)))
    assert (start_only - x).flatten(1).norm(dim=1).max() <= eps * (1 + 1e-5)
    fgm = fgsm(model, x, y, eps=eps, norm="L2")
    assert (fgm - x).flatten(1).norm(dim=1).max() <= eps * (1 + 1e-5) and fgm.min() >= 0 and fgm.max() <= 1
