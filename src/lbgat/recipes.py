"""Finding recipe files: a path, or a name under the shipped ``configs/`` folder."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError


def recipes_root() -> Path:
    """``configs/`` as installed inside the package, or at the root of a source checkout."""
    installed = Path(__file__).resolve().parent / "configs"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[2] / "configs"


def list_recipes() -> list[str]:
    root = recipes_root()
    return sorted(str(path.relative_to(root).with_suffix("")) for path in root.rglob("*.yaml"))


def find_recipe(name_or_path: str) -> Path:
    """An existing file path, or a recipe name such as ``paper/cifar10-lbgat-trades-a6``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = recipes_root() / name_or_path
    for option in (candidate, candidate.with_suffix(".yaml")):
        if option.is_file():
            return option
    if path.is_dir():
        raise ConfigError(f"config {name_or_path!r} is a directory, not a YAML recipe file")
    if path.exists():
        raise ConfigError(f"config {name_or_path!r} is not a regular file (a recipe is read from a YAML file)")
    raise ConfigError(f"config {name_or_path!r} is neither a file nor a shipped recipe (see `lbgat recipes`)")
