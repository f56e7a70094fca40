"""One lifecycle for methods and plug-ins: the trainer checks, prepares and builds them
through their hooks and names none of them; their settings are typed once per run and carried."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lbgat.train
from lbgat.config import build_config
from lbgat.methods import factory, list_methods
from lbgat.methods.plugin import list_plugins
from lbgat.runtime.world import World
from lbgat.train import train
from lbgat.train.setup import validate

TRAIN_FOLDER = Path(lbgat.train.__file__).parent
TINY = {"model": "tiny-cnn", "batch_size": 8, "max_steps": 1}
TINY_DATA = ["data.val_size=0", "data.train_size=16", "attack.steps=1"]


def test_the_trainer_names_no_method_or_plugin() -> None:
    """No train/ module imports a method's or plug-in's own module, or names a plug-in in its code."""
    own_modules = {cls.__module__ for cls in [*list_methods(), *list_plugins()]}
    for path in TRAIN_FOLDER.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {f"lbgat.methods.{node.module.rpartition('.')[2]}" for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("methods.")}
        assert not imported & own_modules, (path.name, imported & own_modules)
        # Docstrings may cite where a rule comes from (a reference's repository can carry a plug-in's name).
        docstrings = {id(node.value) for node in ast.walk(tree)
                      if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
        words = " ".join(node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute)
                         else str(node.value) for node in ast.walk(tree)
                         if isinstance(node, ast.Name | ast.Attribute | ast.Constant)
                         and id(node) not in docstrings).lower()
        for plugin in list_plugins():
            assert plugin.name not in words, (path.name, plugin.name)


@pytest.mark.parametrize(("method", "plugins"), [("iseat", []), ("trades", ["awp"])])
def test_a_weight_perturbation_trains_under_torchrun(method: str, plugins: list[str]) -> None:
    """Its ascent is taken on the global batch (tests/train/test_weight_perturbation_under_torchrun.py), so no
    check refuses it under several processes."""
    config = build_config(None, {"method.name": method, "method.plugins": plugins})
    validate(config, world=World(rank=0, size=2, local_rank=0))


def test_method_settings_are_typed_once_per_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From the flags to the built method, the method's and each plug-in's settings are built from their
    mappings once (in validate) and carried to resolve and build_parts."""
    built: list[str] = []
    for name in ("method_params", "plugin_params"):
        real = getattr(factory, name)
        monkeypatch.setattr(factory, name, lambda key, values=None, real=real: built.append(key) or real(key, values))
    config = build_config(None, {**TINY, "method.name": "trades", "method.plugins": ["rpat", "awp"],
                                 "out": str(tmp_path / "run")}, TINY_DATA)
    result = train(config, progress=False)
    assert result.position.global_step == 1
    assert built == ["trades", "rpat", "awp"]
