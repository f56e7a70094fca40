"""The package's layering (docs/architecture.md): every module's imports, read with
``ast`` (module-level, function-level and ``TYPE_CHECKING`` imports alike, absolute and relative),
point only at its own layer or a layer below it.

    cli -> demo -> compare -> report -> export -> train -> evaluate -> {methods, checkpoint, config}
        -> {attacks, models, data}
        -> {rng, errors, world and the small leaf helpers}

Training may use evaluation (validation); evaluation never uses training; nothing below imports
anything above. A new top-level module or package must be given its layer in ``LAYERS``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import lbgat

PACKAGE_ROOT = Path(lbgat.__file__).resolve().parent

# Top to bottom. Names are top-level modules or packages of lbgat (a package's submodules share its layer).
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    # The entry points: the CLI and the package's public API (lbgat/__init__.py: load_model, __version__).
    ("cli", frozenset({"lbgat", "__main__", "cli"})),
    ("demo", frozenset({"demo", "demo_files"})),
    # `lbgat compare`: trains, evaluates and reports several methods (the engine of the demo).
    ("compare", frozenset({"compare"})),
    # Reports over finished runs and their evaluations (reads run folders, runs models for the t-SNE).
    ("report", frozenset({"report"})),
    # `lbgat export` (writing an export; it names a run's last.pt and finds `lbgat eval` reports).
    ("export", frozenset({"export"})),
    ("train", frozenset({"train"})),
    ("evaluate", frozenset({"evaluate"})),
    # checkpoints: writing and reading checkpoints, checking what they hold, and reading an export folder back
    # (load_model and eval take one where they take a checkpoint).
    ("methods/checkpoints/config", frozenset({"methods", "checkpoints", "config"})),
    ("attacks/models/data", frozenset({"attacks", "models", "data"})),
    # The foundation: errors, the version string, and what imports nothing of lbgat above it: runtime (the
    # process's place and device, float32 and precision modes, randomness, provenance), storage (atomic writes,
    # locks, the record of what lbgat wrote, YAML, pickle verdicts, literal Markdown), the declaration of a
    # setting, typed mappings and recipe lookup.
    ("foundation", frozenset({
        "errors", "version", "runtime", "storage", "settings", "structured", "recipes",
    })),
)
RANK = {name: rank for rank, (_, names) in enumerate(LAYERS) for name in names}
LAYER_NAME = {name: LAYERS[rank][0] for name, rank in RANK.items()}
RULE = " -> ".join(label for label, _ in LAYERS)


@dataclass(frozen=True)
class Import:
    path: Path  # the importing file
    line: int
    module: str  # the importing module, e.g. lbgat.evaluate.runner
    target: str  # the lbgat module or package it imports, e.g. lbgat.train.setup


def _module_name(path: Path) -> str:
    parts = ("lbgat", *path.relative_to(PACKAGE_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(dotted: str) -> bool:
    relative = Path(*dotted.split(".")[1:]) if "." in dotted else Path()
    return (PACKAGE_ROOT / relative).with_suffix(".py").is_file() or (PACKAGE_ROOT / relative / "__init__.py").is_file()


def _imports(path: Path) -> list[Import]:
    return _imports_in(path.read_text(encoding="utf-8"), _module_name(path), path.name == "__init__.py", path)


def _imports_in(text: str, module: str, is_package: bool, path: Path) -> list[Import]:
    """Every import of an lbgat module in ``text``, wherever it stands (module level, functions, if-blocks)."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from pkg import name`: the submodule pkg.name when there is one, else pkg itself.
            targets = [f"{source}.{alias.name}" if _exists(f"{source}.{alias.name}") else source
                       for alias in node.names]
        else:
            continue
        found += [Import(path, node.lineno, module, target) for target in targets
                  if target == "lbgat" or target.startswith("lbgat.")]
    return found


def _top(dotted: str) -> str:
    """The layer key of a module: its top-level name under lbgat ('lbgat' for the package root)."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else "lbgat"


def _modules() -> list[Path]:
    return sorted(PACKAGE_ROOT.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    """A new top-level module or package is placed in the layering on purpose, not by accident."""
    unplaced = sorted({_top(_module_name(path)) for path in _modules()} - RANK.keys())
    assert not unplaced, f"lbgat modules with no layer: {unplaced}; add each to LAYERS in {__file__}"


def test_no_module_imports_a_layer_above_its_own() -> None:
    violations = []
    for path in _modules():
        for found in _imports(path):
            source, target = _top(found.module), _top(found.target)
            if source in RANK and target in RANK and RANK[target] < RANK[source]:
                violations.append(
                    f"{found.path.relative_to(PACKAGE_ROOT.parent)}:{found.line}: {found.module} "
                    f"(layer {LAYER_NAME[source]}) imports {found.target} (layer {LAYER_NAME[target]}, above it)"
                )
    violations = list(dict.fromkeys(violations))  # one line per import statement and target
    assert not violations, (
        f"imports against the layering {RULE} (a module may import only its own layer or a lower one; "
        "move what both need below both):\n" + "\n".join(violations)
    )


def test_inside_the_package_imports_are_relative() -> None:
    """One import style inside lbgat (data/ and models/ once used absolute imports)."""
    absolute = [
        f"{path.relative_to(PACKAGE_ROOT.parent)}:{node.lineno}"
        for path in _modules()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if (isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "lbgat")
        or (isinstance(node, ast.Import) and any(alias.name.split(".")[0] == "lbgat" for alias in node.names))
    ]
    assert not absolute, "absolute imports of lbgat inside lbgat (use relative ones):\n" + "\n".join(absolute)


def test_the_checker_sees_relative_function_level_and_from_package_imports() -> None:
    """The parser resolves ``from .. import x``, ``from . import submodule``, ``from .. import name`` (the
    package) and imports inside functions; an evaluate -> train import is reported."""
    text = ("import torch\n"
            "def f():\n    from ..train import trainer\n    from .. import errors\n    from . import specs\n"
            "    from .. import __version__\n    import lbgat.models.registry\n")
    found = _imports_in(text, "lbgat.evaluate.runner", False, Path("runner.py"))
    assert [(item.line, item.target) for item in found] == [
        (3, "lbgat.train.trainer"), (4, "lbgat.errors"), (5, "lbgat.evaluate.specs"), (6, "lbgat"),
        (7, "lbgat.models.registry"),
    ]
    assert [_top(item.target) for item in found] == ["train", "errors", "evaluate", "lbgat", "models"]
    assert RANK["train"] < RANK["evaluate"] < RANK["models"]


# Import cycles still to be broken (each a set of modules); a new cycle fails the test below.
KNOWN_CYCLES: list[frozenset[str]] = []


def _import_graph() -> dict[str, set[str]]:
    """Module -> the lbgat modules it imports (anywhere in it), package __init__ files left out: a package
    importing its own submodules to register them is not a cycle anyone has to read through."""
    modules = {_module_name(path) for path in _modules() if path.name != "__init__.py"}
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for path in _modules():
        if path.name == "__init__.py":
            continue
        for found in _imports(path):
            target = found.target
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if target in modules and target != found.module:
                graph[found.module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[frozenset[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(frozenset(component))
    return components


def test_no_new_import_cycle_inside_a_layer() -> None:
    """Modules that import each other (even inside a function) can only be read together: a cycle is split by
    moving what both need into a module of its own (as checkpoints.model_spec and checkpoints.loading were)."""
    cycles = _cycles(_import_graph())
    new = [sorted(cycle) for cycle in cycles if cycle not in KNOWN_CYCLES]
    assert not new, f"import cycles: {new}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [frozenset({"a", "b", "c"})]


def test_every_known_cycle_is_still_there() -> None:
    """An exemption outlives its cycle only by mistake: once a cycle is broken, its entry goes."""
    cycles = _cycles(_import_graph())
    assert all(known in cycles for known in KNOWN_CYCLES), "remove the broken cycles from KNOWN_CYCLES"
