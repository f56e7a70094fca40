"""`lbgat compare` holds a small slice of the training images out by default, so every comparison's report has
the held-out robust accuracy per epoch (the robust-overfitting curve); the user's own choice always wins.
Its evaluation flags are checked before the first method trains."""

from __future__ import annotations

from pathlib import Path

import pytest

from lbgat.cli import main
from lbgat.compare import ComparePlan, parse_methods
from lbgat.compare.engine import COMPARE_VAL_SIZE, _config
from lbgat.config import load_yaml
from lbgat.recipes import find_recipe


def _val_size(tmp_path: Path, recipe: str, *, val_size: int | None = None, overrides: tuple[str, ...] = ()) -> int:
    (entry,) = parse_methods("trades:alpha=6")
    plan = ComparePlan(entries=(entry,), out=tmp_path, recipe=load_yaml(find_recipe(recipe)), overrides=overrides,
                       val_size=val_size)
    return _config(plan, entry).data.val_size


def test_a_recipe_that_holds_nothing_out_gets_the_comparisons_slice(tmp_path: Path) -> None:
    assert load_yaml(find_recipe("paper/cifar10-trades-a6"))["data"]["val_size"] == 0
    assert _val_size(tmp_path, "paper/cifar10-trades-a6") == COMPARE_VAL_SIZE


def test_the_users_choice_wins(tmp_path: Path) -> None:
    assert _val_size(tmp_path, "paper/cifar10-trades-a6", val_size=0) == 0
    assert _val_size(tmp_path, "paper/cifar10-trades-a6", overrides=("data.val_size=0",)) == 0
    assert _val_size(tmp_path, "paper/cifar10-trades-a6", val_size=200) == 200
    assert _val_size(tmp_path, "paper/cifar10-trades-a6", overrides=("data.val_size=300",)) == 300


def test_the_demos_recipe_holds_its_own_slice_out(tmp_path: Path) -> None:
    own = load_yaml(find_recipe("cpu/mnist-5k-demo"))["data"]["val_size"]
    assert own > 0 and _val_size(tmp_path, "cpu/mnist-5k-demo") == own


@pytest.mark.parametrize(("flag", "value", "says"), [("--eps", "2", "--eps"), ("--step-size", "0", "--step-size"),
                                                     ("--val-size", "-1", "data.val_size")])
def test_bad_evaluation_and_holdout_flags_are_one_line_before_training(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, says: str) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", "--methods", "natural", "--config", "cpu/mnist-5k-demo", "--out", str(out),
                 flag, value, "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and says in error, error
    assert not (out / "natural").exists()
