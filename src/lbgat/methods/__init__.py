"""Training methods: one file each, registered by name.

Each is an ``nn.Module`` holding the student (and any teacher) whose forward on a
:class:`~lbgat.data.loader.Batch` returns ``{"loss": ..., <named terms>}``. Usable in a user's own
training loop: build it with :func:`create_method`, optimise ``method.parameters()``.
"""

from . import alp, awp, bgat, iseat, lbgat, lbgat_alp, lbgat_trades, mart, natural, pgd_at, rpat, trades, vfd  # noqa: F401
from .base import LossTerms, Method, MethodParams, NoParams, TrainAttack, add_weighted
from .factory import create_method, method_params
from .guided import GuidedMethod, LogitRegulariser
from .registry import get_method, list_methods, register_method

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
