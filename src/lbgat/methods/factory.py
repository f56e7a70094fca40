"""Building a method from its name, its hyperparameters, its networks and its plug-ins."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..structured import from_mapping
from .base import Method, MethodParams, SettingOutOfRange, TrainAttack
from .lifecycle import RunFacts, TrainedModels
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
    models: TrainedModels | None = None,
) -> Method:
    """A ready-to-train method. ``params`` may be a mapping (``{"alpha": 6}``) or the typed dataclass;
    ``plugins`` names plug-ins (``["rpat", "awp"]``), maps them to their settings
    (``{"rpat": {"lam": 2}}``) or gives built ones (``[VFD(VFDParams(...), teacher=natural)]``); ``models``
    loads the trained models a plug-in names in its settings (``vfd.checkpoint``), each plug-in's ``prepare``.

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
    for plugin in built:
        plugin.prepare(models)
    return cls(student, params, attack if cls.attack_objective is not None else None, teacher, built)


@dataclass(frozen=True)
class PluginChoice:
    cls: type[Plugin]
    params: MethodParams


@dataclass(frozen=True)
class MethodChoice:
    """A method and its plug-ins as a run chose them: typed once from the config's mappings and checked
    (:func:`choose_method`), then carried to the resolved config and to :meth:`build`."""

    cls: type[Method]
    params: MethodParams
    plugins: tuple[PluginChoice, ...] = ()

    @property
    def label(self) -> str:
        """The method and its plug-ins as runs are named: ``trades+rpat+awp``."""
        return "+".join([self.cls.name, *(plugin.cls.name for plugin in self.plugins)])

    def params_mapping(self) -> dict[str, Any]:
        """Every hyperparameter of the method, defaults included (what the resolved config holds)."""
        return dataclasses.asdict(self.params)

    def plugin_mappings(self) -> dict[str, dict[str, Any]]:
        return {plugin.cls.name: dataclasses.asdict(plugin.params) for plugin in self.plugins}

    def build(self, student: nn.Module, attack: TrainAttack | None, teacher: nn.Module | None,
              models: TrainedModels | None) -> Method:
        return create_method(self.cls.name, student, params=self.params, attack=attack, teacher=teacher,
                             plugins={plugin.cls.name: plugin.params for plugin in self.plugins}, models=models)


def choose_method(name: str, params: Mapping[str, Any], plugins: Sequence[str],
                  plugin_settings: Mapping[str, Any], run: RunFacts) -> MethodChoice:
    """The method ``name`` with ``params`` and its ``plugins`` with theirs, typed and checked in one line each:
    the settings' types and ranges, the combination (:func:`~lbgat.methods.plugin.check_combination`), and
    what the method and each plug-in refuse of the ``run`` (their ``check_run``)."""
    cls = get_method(name)
    typed = method_params(name, params)
    check_plugin_settings(plugins, plugin_settings)
    chosen = tuple(PluginChoice(get_plugin(plugin), plugin_params(plugin, plugin_settings.get(plugin)))
                   for plugin in plugins)
    check_combination(cls, typed, [(plugin.cls, plugin.params) for plugin in chosen])
    cls.check_run(typed, run)
    for plugin in chosen:
        plugin.cls.check_run(plugin.params, run)
    return MethodChoice(cls, typed, chosen)
