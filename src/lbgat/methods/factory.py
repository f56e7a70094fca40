"""Building a method from its name, its hyperparameters, its networks and its plug-ins."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..structured import from_mapping
from .base import Method, MethodParams, SettingOutOfRange, TrainAttack
from .plugin import Plugin, check_combination, get_plugin
from .registry import get_method

PluginsGiven = Sequence[str | Plugin] | Mapping[str, Mapping[str, Any] | MethodParams | Plugin]


def method_params(name: str, values: Mapping[str, Any] | None = None) -> MethodParams:
    """The typed hyperparameters of method ``name``: defaults overridden by ``values``."""
    return _params(get_method(name).Params, values, "method")


def plugin_params(name: str, values: Mapping[str, Any] | None = None) -> MethodParams:
    """The typed hyperparameters of plug-in ``name``: defaults overridden by ``values``."""
    return _params(get_plugin(name).Params, values, f"method.{name}")


def _params(cls: type[MethodParams], values: Mapping[str, Any] | None, where: str) -> MethodParams:
    try:
        return from_mapping(cls, values or {}, where=where)
    except SettingOutOfRange as error:
        raise ConfigError(f"{where}.{error.field} must be a finite number >= 0, got {error.value!r}") from None


def check_plugin_settings(plugins: Sequence[str], settings: Mapping[str, Any]) -> None:
    """Settings given for a plug-in that is not used are a mistake (a typo, or a forgotten --plugin)."""
    for name, values in settings.items():
        get_plugin(name)
        if name not in plugins:
            raise ConfigError(f"method.{name} settings are given, but {name} is not in method.plugins "
                              f"(add --plugin {name})")
        if not isinstance(values, Mapping):
            raise ConfigError(f"setting 'method.{name}' must be a mapping of {name}'s settings, got {values!r}")


def build_plugins(plugins: PluginsGiven) -> list[Plugin]:
    """Plug-ins from names (default settings), name -> settings, or ready instances."""
    items = plugins.items() if isinstance(plugins, Mapping) else [(p, None) if isinstance(p, str) else (p.name, p)
                                                                    for p in plugins]
    built = []
    for name, given in items:
        if isinstance(given, Plugin):
            built.append(given)
            continue
        cls = get_plugin(name)
        params = given if isinstance(given, MethodParams) else plugin_params(name, given)
        built.append(cls(params))
    return built


def create_method(
    name: str,
    student: nn.Module,
    *,
    params: Mapping[str, Any] | MethodParams | None = None,
    attack: TrainAttack | None = None,
    teacher: nn.Module | None = None,
    plugins: PluginsGiven = (),
) -> Method:
    """A ready-to-train method. ``params`` may be a mapping (``{"alpha": 6}``) or the typed dataclass;
    ``plugins`` names plug-ins (``["rpat", "awp"]``), maps them to their settings
    (``{"rpat": {"lam": 2}}``) or gives built ones (``[VFD(VFDParams(...), teacher=natural)]``).

    Example::

        method = create_method("lbgat-trades", student, teacher=teacher, params={"alpha": 0},
                               attack=TrainAttack(eps=0.031, step_size=0.007, steps=10, start="normal"))
        optimizer = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
        terms = method(batch)          # {"loss", "mse", "ce_teacher", "kl"}
        terms["loss"].backward(); optimizer.step()
        method.after_step()            # removes a weight perturbation (awp, iseat); else nothing
    """
    cls = get_method(name)
    if params is None or isinstance(params, Mapping):
        params = method_params(name, params)
    built = build_plugins(plugins)
    check_combination(cls, params, [(type(plugin), plugin.params) for plugin in built])
    return cls(student, params, attack if cls.attack_objective is not None else None, teacher, built)
