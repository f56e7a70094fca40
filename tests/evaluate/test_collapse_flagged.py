"""A run whose predictions collapse to one class is flagged at the epoch it happens (the
training log line and metrics.jsonl), and the evaluation's sanity check "predictions not collapsed to one
class" fails for it and marks every number of its report."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from lbgat.cli import main
from lbgat.evaluate.checks import CheckInputs, collapse_check
from lbgat.evaluate.collapse import COLLAPSE_SHARE, MIN_EXAMPLES, prediction_share
from lbgat.evaluate.doubts import doubts_of, mark_text
from lbgat.evaluate.report_files import render_markdown
from lbgat.models import registry
from lbgat.models.normalize import InputNormalization

CONSTANT = "constant-output-test"
TINY = ["--config", "cpu/mnist-5k-demo", "--set", "data.train_size=128", "--set", "schedule.epochs=2",
        "--set", "schedule.decay_epochs=[]", "--no-progress"]


class ConstantOutput(nn.Module):
    """Ignores its input: every image gets the same logits, so every prediction is the same class."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.normalize = InputNormalization()
        self.fc = nn.Linear(1, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.normalize(x).flatten(1)[:, :1] * 0)


@pytest.fixture(scope="module")
def constant_model() -> Iterator[str]:
    registry.register_model(CONSTANT, description="test only: ignores its input")(
        lambda num_classes, in_channels, image_size: ConstantOutput(num_classes))
    yield CONSTANT
    registry._REGISTRY.pop(CONSTANT)


def shares(predictions: list[int], labels: list[int], num_classes: int = 10):
    return prediction_share(torch.tensor(predictions), torch.tensor(labels), num_classes)


def test_the_thresholds() -> None:
    balanced = list(range(10)) * 10
    assert shares(balanced, balanced).verdict == "pass"
    assert shares([3] * 100, balanced).verdict == "fail" and shares([3] * 100, balanced).share == 1.0
    assert shares([3] * 90 + list(range(10)), balanced).share >= COLLAPSE_SHARE
    # (1 + 1/10) / 2 = 55% with ten classes: leaning on one class, not collapsed
    assert shares([3] * 50 + list(range(10)) * 5, balanced).verdict == "warn"
    assert shares([3] * 40 + list(range(10)) * 6, balanced).verdict == "pass"
    # Two classes: 75% is the warning line, 50% is what an honest model gives.
    assert shares([0] * 60 + [1] * 40, [0, 1] * 50, 2).verdict == "pass"
    assert shares([0] * 80 + [1] * 20, [0, 1] * 50, 2).verdict == "warn"
    # Data that is itself mostly one class is not a collapse; too few examples give no verdict.
    assert shares([3] * 100, [3] * 95 + [1] * 5).verdict == "pass"
    assert shares([3] * (MIN_EXAMPLES - 1), list(range(MIN_EXAMPLES - 1))).verdict == "skipped"


def test_the_check_fails_for_a_constant_model_and_marks_every_number() -> None:
    model = ConstantOutput(10).eval()
    x = torch.rand(50, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.arange(50) % 10
    result = collapse_check(model, CheckInputs(x, y, torch.arange(50), 0.3, 0.01, "Linf", seed=0)).to_dict()
    assert result["verdict"] == "fail" and result["id"] == "collapse"
    assert "100.0% of the clean predictions on 50 test images are class" in result["detail"]
    assert result["measured"]["share"] == 1.0 and result["measured"]["label_share"] == pytest.approx(0.1)
    report = {"results": [{"attack": "clean", "kind": "clean"}, {"attack": "pgd40", "kind": "pgd"}],
              "checks": [result]}
    assert {attack: mark_text(found) for attack, found in doubts_of(report).items()} == {
        "clean": "✗ 100% one class", "pgd40": "✗ 100% one class"}


def test_an_honest_model_passes() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)).eval()
    x = torch.rand(50, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)  # labels it gets right: whatever their spread, no collapse
    assert collapse_check(model, CheckInputs(x, y, torch.arange(50), 0.3, 0.01, "Linf", seed=0)).verdict == "pass"


def epochs_of(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [record for record in records if record["event"] == "epoch"]


@pytest.mark.parametrize(("val_size", "on", "n"), [(0, "training images", 128), (40, "held-out images", 40)])
def test_a_collapsing_run_is_flagged_at_every_epoch(constant_model: str, tmp_path: Path, val_size: int, on: str,
                                                    n: int, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "--method", "natural", "--model", constant_model, "--out", str(run), *TINY,
                 "--set", f"data.val_size={val_size}"]) == 0
    epochs = epochs_of(run)
    assert [record["epoch"] for record in epochs] == [1, 2]
    for record in epochs:
        collapse = record["collapse"]
        assert collapse["collapsed"] is True and collapse["verdict"] == "fail"
        assert collapse["share"] == 1.0 and collapse["on"] == on and collapse["n"] == n
        assert collapse["label_share"] < 0.5
    err = capsys.readouterr().err
    assert err.count("predictions COLLAPSED to one class: 100.0% of") == 2
    assert f"warning: epoch 1/2: predictions COLLAPSED to one class: 100.0% of {n} {on} are class" in err


def test_the_evaluation_of_a_collapsed_run_marks_every_number(constant_model: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", "--method", "natural", "--model", constant_model, "--out", str(run), *TINY,
                 "--set", "data.val_size=0"]) == 0
    assert main(["eval", str(run / "last.pt"), "--attacks", "clean,fgsm", "--n", "40", "--check-n", "40",
                 "--no-progress"]) == 0
    report = json.loads((run / "eval-last" / "report.json").read_text())
    check = next(check for check in report["checks"] if check["id"] == "collapse")
    assert check["name"] == "predictions not collapsed to one class" and check["verdict"] == "fail"
    assert check["measured"]["share"] == 1.0
    markdown = render_markdown(report)
    for found in report["results"]:
        assert f"| {100 * found['accuracy']:.2f}% ✗ 100% one class" in markdown
