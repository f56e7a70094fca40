"""The test tree mirrors the package, test files import shared code from ``helpers`` only, and no two
test files share a name (pytest imports each by its name)."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import lbgat

TESTS = Path(__file__).resolve().parent
PACKAGE = Path(lbgat.__file__).resolve().parent
BESIDE_THE_PACKAGE = {"cli", "config", "benchmarks", "helpers", "fixtures", "__pycache__"}


def all_test_files() -> list[Path]:
    return sorted(path for path in TESTS.rglob("test_*.py") if "fixtures" not in path.parts)


def test_each_test_folder_names_a_subpackage_or_a_declared_neighbour() -> None:
    subpackages = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()}
    folders = {path.name for path in TESTS.iterdir() if path.is_dir() and not path.name.startswith(".")}
    assert folders - subpackages - BESIDE_THE_PACKAGE == set()


def test_no_two_test_files_share_a_name() -> None:
    names = Counter(path.name for path in all_test_files())
    assert [name for name, count in names.items() if count > 1] == []


def test_test_files_import_shared_code_from_helpers_not_from_each_other() -> None:
    borrowed = []
    for path in all_test_files():
        for node in ast.walk(ast.parse(path.read_text())):
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            borrowed += [f"{path.relative_to(TESTS)}: {module}" for module in modules
                         if module.split(".")[0].startswith(("test_", "conftest"))]
    assert borrowed == []
