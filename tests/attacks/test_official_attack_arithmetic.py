"""The official codes' attack arithmetic offered as options: AT_AWP's perturbation iterate
(``iterate="delta"``) and AT_AWP's and advertorch's clipped uniform start (``start="uniform-clipped"``).

What each keeps (the eps-ball, [0, 1]), how it differs from lbgat's default, and that the whole attack is
AT_AWP's ``attack_pgd`` restated step by step; tests/methods/test_official_plugins.py checks it against the official
code's own output.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.method_formulas import BNNet
from lbgat.attacks import ITERATES, pgd
from lbgat.config import build_config
from lbgat.data.loader import Batch
from lbgat.errors import ConfigError
from lbgat.methods import TrainAttack, create_method
from lbgat.runtime.rng import ExampleRNG, Stream
from lbgat.train.setup import validate

EPS, STEP = 8 / 255, 2 / 255


class Inputs(nn.Module):
    """A linear model that keeps every input it sees (the sign of its input gradient does not depend on x)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 8 * 8, 5)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.linear(x.flatten(1))


def images(count: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with whole examples at 0 and at 1 and pixels near both, so the box cuts the ball."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(count, 3, 8, 8, generator=generator)
    x[0], x[1] = 0.0, 1.0
    x[2] = x[2] * 0.02  # within eps of 0
    return x, torch.randint(0, 5, (count,), generator=generator)


def rng(count: int) -> ExampleRNG:
    return ExampleRNG(3, 0, torch.arange(count))


def attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs: object) -> torch.Tensor:
    torch.manual_seed(0)
    settings = {"eps": EPS, "step_size": STEP, "steps": 10, "bn_mode": "train", "rng": rng(len(x)),
                "stream": Stream.TRAIN_ATTACK_START, **kwargs}
    return pgd(model, x, y, **settings)  # type: ignore[arg-type]


def reference_delta_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor,
                           clip_start: bool, steps: int = 10) -> torch.Tensor:
    """AT_AWP's L-inf attack (Rice et al.'s attack_pgd) restated step by step: delta from U(-eps, eps),
    clipped so that x + delta is in [0, 1]; each step delta <- clip(delta + a sign(grad_delta CE), -eps, eps),
    clipped so that x + delta is in [0, 1]; the result clip(x + delta, 0, 1)."""
    delta = noise.clone()
    if clip_start:
        delta = torch.max(torch.min(delta, 1 - x), -x)
    model.train()
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = torch.clamp(delta.detach() + STEP * grad.sign(), -EPS, EPS)
        delta = torch.max(torch.min(delta, 1 - x), -x)
    return torch.clamp(x + delta, 0, 1)


def uniform_noise(x: torch.Tensor) -> torch.Tensor:
    return (rng(len(x)).uniform(Stream.TRAIN_ATTACK_START, tuple(x.shape[1:])) * 2.0 - 1.0) * EPS


@pytest.mark.parametrize("start", ["uniform", "uniform-clipped", "normal", "none"])
@pytest.mark.parametrize("iterate", ITERATES)
def test_every_iterate_and_start_stays_in_the_eps_ball_and_the_unit_box(iterate: str, start: str) -> None:
    torch.manual_seed(0)
    model = BNNet()
    x, y = images()
    x_adv = attack(model, x, y, iterate=iterate, start=start, start_std=0.05)
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not x_adv.requires_grad


@pytest.mark.parametrize("clip_start", [True, False])
def test_the_delta_iterate_is_at_awps_attack_bit_for_bit(clip_start: bool) -> None:
    """With train-mode BatchNorm (AT_AWP's attack), on a model whose gradients change with the input."""
    torch.manual_seed(0)
    model = BNNet()
    x, y = images()
    expected = reference_delta_attack(model, x, y, uniform_noise(x), clip_start)
    torch.manual_seed(0)
    model = BNNet()  # the same weights and BatchNorm statistics again
    x_adv = attack(model, x, y, iterate="delta", start="uniform-clipped" if clip_start else "uniform")
    assert torch.equal(x_adv, expected)


def test_the_two_iterates_are_the_same_steps_rounded_differently() -> None:
    """On a linear model (every step's sign the same for both) the two iterates take the same steps: they
    agree to a float32 rounding, and differ in its last bits somewhere, which is all that parts them where
    a gradient near zero changes sign."""
    x, y = images(16)
    model = Inputs()  # two steps: most pixels are still inside the ball, where the rounding shows
    by_x = attack(model, x, y, iterate="x", start="uniform-clipped", steps=2)
    by_delta = attack(model, x, y, iterate="delta", start="uniform-clipped", steps=2)
    assert (by_x - by_delta).abs().max() <= 2.0**-24
    assert not torch.equal(by_x, by_delta)


@pytest.mark.parametrize("iterate", ITERATES)
def test_the_clipped_start_is_the_uniform_start_clipped_to_the_unit_box(iterate: str) -> None:
    """The first input the model sees: the same draw as ``uniform``, clipped to [0, 1] (and so in the
    ball); ``uniform`` leaves the box where x is within eps of 0 or 1, which changes the first gradient."""
    x, y = images()
    clipped, plain = Inputs(), Inputs()
    attack(clipped, x, y, iterate=iterate, start="uniform-clipped", steps=1)
    attack(plain, x, y, iterate=iterate, start="uniform", steps=1)
    first_clipped, first_plain = clipped.seen[0], plain.seen[0]
    assert first_clipped.min() >= 0 and first_clipped.max() <= 1
    assert (first_clipped - x).abs().max() <= EPS + 1e-7
    assert torch.equal(first_clipped, first_plain.clamp(0, 1))
    assert first_plain.min() < 0 and first_plain.max() > 1  # examples at 0 and 1: the plain start leaves [0, 1]
    inside = (first_plain >= 0) & (first_plain <= 1)
    assert torch.equal(first_clipped[inside], first_plain[inside])


def test_delta_is_l_infinity_only() -> None:
    x, y = images()
    with pytest.raises(ValueError, match="L-infinity only"):
        pgd(BNNet(), x, y, eps=0.5, step_size=0.1, steps=1, norm="L2", iterate="delta")
    with pytest.raises(ValueError, match="iterate must be one of"):
        pgd(BNNet(), x, y, eps=EPS, step_size=STEP, steps=1, iterate="x'")  # type: ignore[arg-type]


def test_the_attack_settings_reach_the_methods_attack() -> None:
    """attack.iterate and attack.start=uniform-clipped are settings with their choices, and a method's
    training attack runs with them."""
    config = build_config(None, None, ["attack.iterate=delta", "attack.start=uniform-clipped"])
    validate(config)
    assert (config.attack.iterate, config.attack.start) == ("delta", "uniform-clipped")
    with pytest.raises(ConfigError, match="attack.iterate must be one of"):
        validate(build_config(None, None, ["attack.iterate=xprime"]))
    x, y = images()
    torch.manual_seed(0)
    student = BNNet()
    method = create_method("pgd-at", student, attack=TrainAttack(
        eps=EPS, step_size=STEP, steps=10, start="uniform-clipped", bn_mode="train", iterate="delta"))
    x_adv = method.adversarial(Batch(x, y, torch.arange(len(x)), epoch=0, seed=3))
    torch.manual_seed(0)
    expected = reference_delta_attack(BNNet(), x, y, uniform_noise(x), clip_start=True)
    assert torch.equal(x_adv, expected)
