"""Training methods: one file each, registered by name.

A method or plug-in is one file in this folder (every module is imported here, so its decorator registers
it). Each method is an ``nn.Module`` holding the student (and any teacher) whose forward on a
:class:`~lbgat.data.loader.Batch` returns ``{"loss": ..., <named terms>}``. Usable in a user's own
training loop: build it with :func:`create_method`, optimise ``method.parameters()``.
"""

import importlib
import pkgutil

from .base import LossTerms, Method, MethodParams, NoParams, TrainAttack, add_weighted
from .factory import create_method, method_params
from .guided import GuidedMethod, LogitRegulariser
from .registry import get_method, list_methods, register_method

# Every module here is imported, so a method or plug-in registers itself by being a file in this folder.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "GuidedMethod",
    "LogitRegulariser",
    "LossTerms",
    "Method",
    "MethodParams",
    "NoParams",
    "TrainAttack",
    "add_weighted",
    "create_method",
    "get_method",
    "list_methods",
    "method_params",
    "register_method",
]
