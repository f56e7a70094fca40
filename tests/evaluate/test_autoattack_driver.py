"""Our AutoAttack driver against a direct call of the packaged official code, and its resumable state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lbgat.errors import ConfigError
from lbgat.evaluate import autoattack as aa_module
from lbgat.evaluate.autoattack import AASettings, run_autoattack

EPS = 0.02
BATCH = 16


def tiny_model(seed: int = 0, classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, classes))
    return model.eval()


def images_and_labels(model: nn.Module, count: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Images the model classifies as their labels, so every attack of the cascade has work to do."""
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(count, 3, 16, 16, generator=generator)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::7] = (y[::7] + 1) % 10  # a few clean errors too
    return x, y


def official_flags(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, version: str, norm: str, eps: float,
                   attacks: list[str] | None) -> tuple[torch.Tensor, torch.Tensor]:
    from pyautoattack import AutoAttack

    adversary = AutoAttack(model, attacks=attacks, device="cpu", eps=eps, norm=norm, seed=0, version=version)
    x_adv, predicted = adversary.run_standard_evaluation(x, y, batch_size=BATCH)
    return predicted == y, x_adv


@pytest.mark.parametrize(("version", "norm", "eps", "attacks"), [
    ("standard", "Linf", EPS, None),
    ("custom", "L2", 0.3, ("apgd-ce", "apgd-dlr")),
])
def test_cascade_equals_a_direct_call_of_the_official_code(version: str, norm: str, eps: float, attacks) -> None:
    model = tiny_model()
    x, y = images_and_labels(model)
    expected_flags, expected_x_adv = official_flags(model, x, y, version=version, norm=norm, eps=eps,
                                                    attacks=list(attacks) if attacks else None)
    settings = AASettings(eps=eps, norm=norm, version=version, attacks=attacks, seed=0, batch_size=BATCH)
    result = run_autoattack(model, x, y, settings, num_classes=10, progress=False)

    assert torch.equal(result.robust, expected_flags)
    assert torch.equal(result.x_adv, expected_x_adv)
    assert result.accuracy == float(expected_flags.float().mean())
    # the cascade has work to do at every level: some clean errors, some attacked, some robust
    assert 0 < int(result.robust.sum()) < int(result.clean_correct.sum()) < len(y)
    assert [step.attack for step in result.cascade] == result.attacks
    robust_counts = [step.robust for step in result.cascade]
    assert robust_counts == sorted(robust_counts, reverse=True) and robust_counts[-1] == int(result.robust.sum())
    assert not model.training


def test_killed_run_resumes_with_identical_flags_inputs_and_cascade(tmp_path: Path, monkeypatch) -> None:
    model = tiny_model()
    x, y = images_and_labels(model)
    settings = AASettings(eps=EPS, version="custom", attacks=("apgd-ce", "apgd-t"), batch_size=BATCH)
    straight = run_autoattack(model, x, y, settings, num_classes=10, progress=False)

    state = tmp_path / "aa_state.pt"
    real_run_one = aa_module._run_one
    calls = []

    def killed_after_the_first_attack(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(args[1])
        return real_run_one(*args, **kwargs)

    monkeypatch.setattr(aa_module, "_run_one", killed_after_the_first_attack)
    with pytest.raises(KeyboardInterrupt):
        run_autoattack(model, x, y, settings, num_classes=10, state_path=state, context={"run": 1}, progress=False)
    monkeypatch.setattr(aa_module, "_run_one", real_run_one)
    assert calls == ["apgd-ce"] and state.is_file()

    resumed = run_autoattack(model, x, y, settings, num_classes=10, state_path=state, context={"run": 1},
                             progress=False)
    assert resumed.resumed_attacks == ["apgd-ce"]
    assert torch.equal(resumed.robust, straight.robust)
    assert torch.equal(resumed.x_adv, straight.x_adv)
    assert [(s.attack, s.robust) for s in resumed.cascade] == [(s.attack, s.robust) for s in straight.cascade]

    with pytest.raises(ConfigError, match="other settings"):
        run_autoattack(model, x, y, settings, num_classes=10, state_path=state, context={"run": 2}, progress=False)


def test_fewer_than_ten_classes_use_every_other_class_as_target() -> None:
    model = tiny_model(classes=4)
    x = torch.rand(8, 3, 16, 16)
    with torch.no_grad():
        y = model(x).argmax(1)
    settings = AASettings(eps=EPS, version="custom", attacks=("apgd-t", "fab-t"), batch_size=8)
    result = run_autoattack(model, x, y, settings, num_classes=4, progress=False)
    assert result.n_target_classes == 3


@pytest.mark.parametrize(("settings", "message"), [
    (AASettings(eps=EPS, version="fast"), "version must be one of"),
    (AASettings(eps=EPS, version="custom"), "needs --aa-attacks"),
    (AASettings(eps=EPS, version="custom", attacks=("apgd-ce", "pgd")), "unknown AutoAttack attack 'pgd'"),
    (AASettings(eps=EPS, version="standard", attacks=("apgd-ce",)), "only applies to --aa-version custom"),
])
def test_bad_settings_are_one_line_errors(settings: AASettings, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings.check()
