"""A script under benchmarks/ loaded as a module, so a test can call its main()."""

from __future__ import annotations

import importlib.util

from helpers.paths import REPO_ROOT

BENCHMARKS = REPO_ROOT / "benchmarks"




def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
