"""Any ``wrn-D-W`` by name, in the official TRADES/LBGAT WideResNet layout."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers.paths import FIXTURES
from lbgat.checkpoints.checkpoint import load_checkpoint
from lbgat.checkpoints.loading import load_model
from lbgat.cli import main
from lbgat.errors import ConfigError
from lbgat.models import ModelFamily, count_flops, create_model, get_model_entry, list_model_families
from lbgat.models.wideresnet import describe_wideresnet

DATA = FIXTURES


def _key_shapes(model: nn.Module) -> dict[str, list[int]]:
    return {key: list(value.shape) for key, value in model.state_dict().items()}


def _family() -> ModelFamily:
    (family,) = [family for family in list_model_families() if family.pattern == "wrn-D-W"]
    return family


def _built_by_the_pattern(name: str) -> nn.Module:
    """``name`` through the family, even where a registered entry of that name takes precedence."""
    entry = _family().resolve(name)
    assert entry is not None
    with torch.device("meta"):
        return entry.factory(num_classes=10, in_channels=3, image_size=32)


def _official_layout(depth: int, width: int) -> dict[str, list[int]]:
    """The released WRN-34-10's keys and shapes (tests/fixtures) cut to ``(depth - 4) / 6`` blocks per
    stage, with its widths 160/320/640 scaled to 16W/32W/64W: the official class at depth D, width W."""
    blocks = (depth - 4) // 6
    widths = {160: 16 * width, 320: 32 * width, 640: 64 * width}
    layout = {}
    for key, shape in json.loads((DATA / "wrn34_10_official_keys.json").read_text()).items():
        block = re.search(r"\.layer\.(\d+)\.", key)
        if block is None or int(block[1]) < blocks:
            layout[key] = [widths.get(size, size) for size in shape]
    return layout


@pytest.mark.parametrize(("name", "depth", "width"), [("wrn-16-4", 16, 4), ("wrn-28-10", 28, 10),
                                                      ("wrn-34-10", 34, 10), ("wrn-22-3", 22, 3)])
def test_the_pattern_builds_the_official_layout(name: str, depth: int, width: int) -> None:
    with torch.device("meta"):
        by_name = create_model(name, num_classes=10)
    expected = _official_layout(depth, width)
    assert list(_key_shapes(by_name)) == list(expected)  # same names, same order
    assert _key_shapes(by_name) == expected
    assert "sub_block1.layer.0.convShortcut.weight" in expected


@pytest.mark.parametrize("name", ["wrn-28-10", "wrn-34-10", "wrn-34-20"])
def test_the_pattern_equals_the_registered_sizes(name: str) -> None:
    with torch.device("meta"):
        registered = create_model(name, num_classes=10)
    assert _key_shapes(_built_by_the_pattern(name)) == _key_shapes(registered)
    assert list(_key_shapes(_built_by_the_pattern(name))) == list(_key_shapes(registered))


def test_wrn_40_2_builds_and_runs_a_forward_and_backward() -> None:
    model = create_model("wrn-40-2", num_classes=7, in_channels=1, image_size=28)
    logits = model(torch.rand(2, 1, 28, 28))
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for name, p in model.named_parameters() if not name.startswith("sub_block1"))


def test_wrn_10_1_keeps_leaving_out_sub_block1_while_the_family_keeps_it() -> None:
    with torch.device("meta"):
        named = set(create_model("wrn-10-1", num_classes=10).state_dict())
        wider = set(create_model("wrn-10-2", num_classes=10).state_dict())
    assert not any(key.startswith("sub_block1.") for key in named)
    assert any(key.startswith("sub_block1.") for key in wider)
    assert get_model_entry("wrn-10-1").description.startswith("WideResNet-10-1 for CPU runs, no sub_block1")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("wrn-12-2", "WideResNet depth must be 6n+4 (10, 16, 22, 28, 34, 40, ...), got 12"),
        ("wrn-4-1", "WideResNet depth must be 6n+4 (10, 16, 22, 28, 34, 40, ...), got 4"),
        ("wrn-16-0", "WideResNet width must be an integer >= 1, got 0"),
        ("wrn-016-4", "write it as wrn-16-4"),
    ],
)
def test_invalid_sizes_are_one_line(name: str, reason: str) -> None:
    with pytest.raises(ConfigError) as error:
        create_model(name, num_classes=10)
    message = str(error.value)
    assert message.startswith(f"unknown model {name!r}: {reason}; known: ") and "\n" not in message
    assert "wrn-D-W" in message


def test_invalid_size_on_the_command_line_is_one_line(capsys, tmp_path: Path) -> None:
    assert main(["train", "--model", "wrn-12-2", "--max-steps", "1", "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "unknown model 'wrn-12-2': WideResNet depth must be 6n+4" in error
    assert not (tmp_path / "run").exists()


def test_named_sizes_state_their_true_size() -> None:
    for name in ("wrn-28-10", "wrn-34-10", "wrn-34-20"):
        stated = re.search(r"\(.*\)$", get_model_entry(name).description)
        counted = re.search(r"\(.*\)$", describe_wideresnet(*map(int, name.split("-")[1:])))
        assert stated is not None and counted is not None and stated[0] == counted[0], name
    with torch.device("meta"):
        small = create_model("wrn-10-1", num_classes=10)
    params, flops = sum(p.numel() for p in small.parameters()), count_flops(small, (3, 32, 32))
    stated_small = get_model_entry("wrn-10-1").description
    assert f"({params / 1e6:.2f}M params, {flops / 1e6:.1f} MFLOP at 3×32×32)" in stated_small


def test_lbgat_models_lists_the_family_once_with_its_named_sizes(capsys) -> None:
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    family = [index for index, line in enumerate(lines) if line.startswith("wrn-D-W ")]
    assert len(family) == 1
    named = [line.split()[0] for line in lines[family[0] + 1:] if line.startswith("  wrn-")]
    assert named == ["wrn-10-1", "wrn-28-10", "wrn-34-10", "wrn-34-20"]
    assert not any(line.startswith("wrn-") and not line.startswith("wrn-D-W") for line in lines)
    assert "13.3 GFLOP" in "\n".join(lines)


def test_train_one_step_with_family_sizes_end_to_end(tmp_path: Path) -> None:
    # mnist-5k is 1×28×28: the WideResNet's global pooling takes it.
    out = tmp_path / "run"
    assert main(["train", "--method", "lbgat-trades", "--dataset", "mnist-5k", "--model", "wrn-16-1",
                 "--teacher", "wrn-10-2", "--batch-size", "4", "--max-steps", "1", "--no-progress",
                 "--set", "data.val_size=0", "--set", "data.train_size=8", "--set", "attack.steps=1",
                 "--out", str(out)]) == 0
    checkpoint = load_checkpoint(out / "last.pt")
    assert checkpoint.meta["config"]["model"] == "wrn-16-1" and checkpoint.meta["config"]["teacher"] == "wrn-10-2"
    model = load_model(out / "last.pt")
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
