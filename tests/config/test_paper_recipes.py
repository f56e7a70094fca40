"""Every row of the LBGAT paper's Tables 1-6 is trained by a shipped recipe holding the paper's settings.

The rows are transcribed in ``tests/fixtures/paper_tables.yaml``; each names a recipe under
``configs/paper/`` and the settings its built config must hold. Configs are only built here, never
validated or trained.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import yaml

from helpers.paths import FIXTURES
from lbgat.config import TrainConfig, build_config, load_yaml
from lbgat.recipes import find_recipe, list_recipes

ROWS_FILE = FIXTURES / "paper_tables.yaml"
ROWS: list[dict[str, Any]] = yaml.safe_load(ROWS_FILE.read_text(encoding="utf-8"))["rows"]

# What each table reports, and on which datasets (spec 13).
TABLE_METRICS = {
    1: {"clean", "pgd20"},
    2: {"clean", "aa"},
    3: {"clean", "pgd20"},
    4: {"clean", "pgd20"},
    5: {"clean", "pgd20", "cw20", "aa"},
    6: {"clean", "pgd20"},
}
TABLE_DATASETS = {
    1: {"cifar10"},
    2: {"cifar100"},
    3: {"cifar10", "cifar100"},
    4: {"cifar10", "cifar100"},
    5: {"cifar10", "cifar100"},
    6: {"tiny-imagenet"},
}
BGAT_DEVIATION = "resnet18 stands in for InceptionResNetV2"
SECTIONS = ("data", "attack", "optim", "schedule")
TOP_LEVEL = ("model", "teacher", "teacher_checkpoints", "batch_size")


def _row_id(row: dict[str, Any]) -> str:
    return f"T{row['table']}-{row['recipe'].removeprefix('paper/')}"


def _paper_recipe_names() -> list[str]:
    return [name for name in list_recipes() if name.startswith("paper/")]


def _build(recipe: str) -> TrainConfig:
    return build_config(load_yaml(find_recipe(recipe)))


def _same(actual: Any, expected: Any) -> bool:
    if isinstance(actual, bool) or isinstance(expected, bool):
        return actual is expected  # True is not 1 here
    if isinstance(expected, float) and isinstance(actual, int | float):
        return math.isclose(actual, expected, rel_tol=1e-12)
    return actual == expected


@pytest.mark.parametrize("row", ROWS, ids=_row_id)
def test_recipe_holds_the_rows_settings(row: dict[str, Any]) -> None:
    config = _build(row["recipe"])
    expect = row["expect"]
    checks: list[tuple[str, Any, Any]] = [
        ("method.name", config.method.name, expect["method"]),
        ("method.params", config.method.params, expect["params"]),
        ("data.name (row dataset)", config.data.name, row["dataset"]),
    ]
    checks += [(key, getattr(config, key), expect[key]) for key in TOP_LEVEL if key in expect]
    for section in SECTIONS:
        for key, value in expect[section].items():
            checks.append((f"{section}.{key}", getattr(getattr(config, section), key), value))
    wrong = [f"{name}: recipe has {actual!r}, table row expects {expected!r}"
             for name, actual, expected in checks if not _same(actual, expected)]
    assert not wrong, f"{row['recipe']} vs Table {row['table']} row {row['row']!r}:\n" + "\n".join(wrong)


def test_rows_cover_tables_one_to_six_only_and_are_well_formed() -> None:
    assert ROWS
    seen: set[tuple[int, str, str]] = set()
    for row in ROWS:
        where = f"Table {row.get('table')} row {row.get('row')!r}"
        assert row["table"] in TABLE_METRICS, f"{where}: only Tables 1-6 train models (Table 7 is evaluation)"
        assert row["dataset"] in TABLE_DATASETS[row["table"]], f"{where}: dataset {row['dataset']}"
        assert row["recipe"].startswith("paper/"), f"{where}: recipe {row['recipe']}"
        key = (row["table"], row["dataset"], row["row"])
        assert key not in seen, f"{where} appears twice"
        seen.add(key)
        assert set(row["paper"]) <= TABLE_METRICS[row["table"]], f"{where}: metrics {sorted(row['paper'])}"
        assert all(0.0 <= value <= 100.0 for value in row["paper"].values()), where
        assert {"method", "params", "model", "teacher", "batch_size", *SECTIONS} <= set(row["expect"]), where
        assert row["expect"]["data"]["name"] == row["dataset"], where
        is_bgat = row["expect"]["method"].startswith("bgat")
        assert ("deviation" in row) == is_bgat, f"{where}: only the BGAT rows deviate (their teacher)"
        if is_bgat:
            assert BGAT_DEVIATION in row["deviation"], where
            assert row["expect"]["teacher_checkpoints"] and row["teacher_recipes"], where
    ids = [_row_id(row) for row in ROWS]
    assert len(ids) == len(set(ids)), "a recipe is listed twice in one table"


def test_every_table_row_named_in_the_spec_is_present() -> None:
    counts = {table: sum(row["table"] == table for row in ROWS) for table in TABLE_METRICS}
    # Table 1: 5 rows; 2: 4; 3: 3 x 2 datasets; 4: 8 x 2; 5: 8 models x 2; 6: 7 (spec 13).
    assert counts == {1: 5, 2: 4, 3: 6, 4: 16, 5: 16, 6: 7}


def test_every_paper_recipe_serves_a_row() -> None:
    names = _paper_recipe_names()
    assert names
    used = {row["recipe"] for row in ROWS} | {name for row in ROWS for name in row.get("teacher_recipes", [])}
    unused = sorted(set(names) - used)
    assert not unused, f"recipes under configs/paper/ that no table row uses: {unused}"
    missing = sorted(used - set(names))
    assert not missing, f"table rows name recipes that do not exist: {missing}"


def test_bgat_teachers_are_the_natural_recipes_outputs() -> None:
    # Read raw, so this holds before teacher_checkpoints is a setting of the config.
    for row in ROWS:
        if "teacher_recipes" not in row:
            continue
        recipe = load_yaml(find_recipe(row["recipe"]))
        teachers = [load_yaml(find_recipe(name)) for name in row["teacher_recipes"]]
        outputs = [f"{teacher['out']}/last.pt" for teacher in teachers]
        assert recipe["teacher_checkpoints"] == outputs == row["expect"]["teacher_checkpoints"], row["recipe"]
        for name, teacher in zip(row["teacher_recipes"], teachers, strict=True):
            assert teacher["method"] in ("natural", {"name": "natural"}), name
            assert teacher["data"]["name"] == row["dataset"], name
            assert teacher["out"] == f"runs/{name}", name
        assert [teacher["model"] for teacher in teachers] == ["wrn-34-10", "resnet18"], row["recipe"]


def test_the_same_model_has_the_same_numbers_in_every_table() -> None:
    numbers: dict[tuple[str, str], tuple[float, str]] = {}
    for row in ROWS:
        for metric, value in row["paper"].items():
            where = f"Table {row['table']} {row['row']!r}"
            first, first_where = numbers.setdefault((row["recipe"], metric), (value, where))
            assert first == value, f"{row['recipe']} {metric}: {first_where} has {first}, {where} has {value}"


def test_recipe_headers_name_their_command_numbers_and_deviation() -> None:
    for name in _paper_recipe_names():
        text = find_recipe(name).read_text(encoding="utf-8")
        comments = "\n".join(line for line in text.splitlines() if line.startswith("#"))
        assert f"# Run: lbgat train --config {name} --data-root DATA" in comments, name
        assert "# Paper:" in comments, name
        method = load_yaml(find_recipe(name))["method"]
        method_name = method if isinstance(method, str) else method["name"]
        if method_name.startswith("bgat") or name.endswith("-natural-resnet18"):
            assert f"DEVIATION: {BGAT_DEVIATION}" in comments, name
    for row in ROWS:
        comments = find_recipe(row["recipe"]).read_text(encoding="utf-8")
        for metric, value in row["paper"].items():
            assert f"{value:.2f}" in comments, f"{row['recipe']} header lacks the paper's {metric} {value:.2f}"
