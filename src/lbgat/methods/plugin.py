"""Plug-ins: parts that join any host method (issue 15).

Two kinds compose with a host without code per pair:

- a **regulariser** (RPAT, VFD-Adv) adds a weighted term to the host's loss. It sees the step through
  :class:`~lbgat.methods.step.StepView`: the batch, the adversarial input, and the student forwards the
  host named (``clean``, ``adv``). It declares which it uses (:meth:`Regulariser.forward_needs`), and
  which it makes itself where the host has none, so that the forwards, and BatchNorm's running
  statistics, are those of the official code; a host that cannot serve a need is refused at build time;
- a **weight perturbation** (AWP) wraps the host's step: after the host's attack it moves the student's
  weights to a worst case nearby, the host's loss and the optimiser step are taken there, and
  :meth:`WeightPerturbation.restore` removes the move after the step.

Plug-ins are registered by name (:func:`register_plugin`); ``lbgat methods`` lists them with the hosts
each applies to. Their hyperparameters are a :class:`~lbgat.methods.base.MethodParams` dataclass, set
under the plug-in's name (``method.rpat.lam``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..data.loader import Batch
from ..errors import ConfigError
from ..structured import from_mapping
from .base import Method, MethodParams
from .lifecycle import RunFacts, TrainedModels
from .registry import Registry
from .step import ForwardNeeds, StepView, Tap

PluginKind = Literal["regulariser", "weight-perturbation"]


class Plugin(nn.Module):
    """A part that joins a host method. Subclasses set the class attributes below and implement their kind's
    methods (:class:`Regulariser` or :class:`WeightPerturbation`)."""

    name: ClassVar[str]
    kind: ClassVar[PluginKind]
    description: ClassVar[str]
    paper: ClassVar[str]  # where it comes from
    reconstruction: ClassVar[bool] = False  # rebuilt from an abstract, not checked against code or full text
    Params: ClassVar[type[MethodParams]]

    def __init__(self, params: MethodParams) -> None:
        super().__init__()
        if not isinstance(params, self.Params):
            raise TypeError(f"{self.name} expects {self.Params.__name__}, got {type(params).__name__}")
        self.params = params

    @classmethod
    def refuses(cls, host: type[Method]) -> str | None:
        """Why this plug-in cannot join ``host`` (one line), or None. By default: a host with a training
        attack, whose step is the two halves (attack, loss) a plug-in works between."""
        if host.attack_objective is None:
            return f"{cls.name} joins methods that train on adversarial examples; {host.name} has no training attack"
        if not host.accepts_plugins:
            return f"{host.name} has its own regulariser and weight perturbation; it takes no plug-ins"
        return None

    @classmethod
    def refusal(cls, host: type[Method], host_params: MethodParams, params: MethodParams) -> str | None:
        """Why this plug-in with ``params`` cannot join ``host`` with ``host_params`` (one line), or None."""
        return cls.refuses(host)

    @classmethod
    def summary(cls, params: MethodParams) -> str:
        """One line for reports: the plug-in and its settings (and what a reader must know of them)."""
        settings = ", ".join(f"{key}={value!r}" for key, value in dataclasses.asdict(params).items())
        note = " (a RECONSTRUCTION from the paper's abstract, not the paper's method)" if cls.reconstruction else ""
        return f"{cls.name}({settings}){note}"

    @classmethod
    def check_run(cls, params: MethodParams, run: RunFacts) -> None:
        """Refuse, in one line and before any work, a run this plug-in cannot join (settings it needs, --compile,
        torchrun)."""

    def prepare(self, models: TrainedModels | None) -> None:
        """Called before the host is built: load what the plug-in needs beyond its settings (VFD's teacher).
        ``models`` is None where the caller offers no trained models (a plug-in built in Python, ready)."""

    def attach(self, method: Method) -> None:
        """Called once the host is built (e.g. to check the student's architecture)."""


class Regulariser(Plugin):
    """A weighted term added to the host's loss."""

    kind = "regulariser"

    @classmethod
    def forward_needs(cls, params: MethodParams) -> ForwardNeeds:
        """The student forwards :meth:`term` uses under ``params``, and where each may come from."""
        return ForwardNeeds()

    @classmethod
    def refusal(cls, host: type[Method], host_params: MethodParams, params: MethodParams) -> str | None:
        """Also refused: a host that does not name a forward this regulariser takes from the host only."""
        reason = super().refusal(host, host_params, params)
        named = host.named_forwards(host_params)
        missing = cls.forward_needs(params).missing_from(named)
        if reason is None and missing:
            reason = (f"{cls.name} takes the host's forward {missing[0]!r}, which {host.name} does not make here "
                      f"(it names: {', '.join(sorted(named)) or 'none'})")
        return reason

    def taps(self) -> Sequence[Tap]:
        """Inner layers of the student read in each of the step's forwards (VFD's features)."""
        return ()

    def weight(self, epoch: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def term(self, step: StepView) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class WeightPerturbation(Plugin):
    """A move of the student's weights between the host's attack and its loss, removed after the step."""

    kind = "weight-perturbation"

    def perturb(self, method: Method, batch: Batch, x_adv: torch.Tensor) -> None:  # pragma: no cover
        raise NotImplementedError

    def restore(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


PLUGINS: Registry[type[Plugin]] = Registry("plug-in")
register_plugin = PLUGINS.register
get_plugin = PLUGINS.get
list_plugins = PLUGINS.all


def plugin_names() -> frozenset[str]:
    return frozenset(PLUGINS.classes)


def plugin_summaries(config_method: Mapping[str, Any]) -> list[str]:
    """The report lines of a run's plug-ins, from the ``method`` section of its saved config (unknown
    plug-ins, e.g. from a newer lbgat, are shown by name)."""
    lines = []
    settings = config_method.get("plugin_params", {}) or {}
    for name in config_method.get("plugins", []) or []:
        try:
            cls = get_plugin(name)
            params = from_mapping(cls.Params, settings.get(name, {}), where=f"method.{name}")
        except (ConfigError, TypeError):
            lines.append(f"{name}({settings.get(name, {})})")
            continue
        lines.append(cls.summary(params))
    return lines


def check_combination(host: type[Method], host_params: MethodParams,
                      plugins: Sequence[tuple[type[Plugin], MethodParams]]) -> None:
    """Refuse, in one line, a combination that makes no sense: a repeated plug-in, one its host does not take
    (:meth:`Plugin.refusal`: also one needing a forward the host does not name under ``host_params``), or two
    weight perturbations."""
    seen: set[str] = set()
    perturbations = []
    for cls, params in plugins:
        name = cls.name
        if name in seen:
            raise ConfigError(f"plug-in {name} is listed twice in method.plugins")
        seen.add(name)
        reason = cls.refusal(host, host_params, params)
        if reason:
            raise ConfigError(f"cannot combine {host.name} with {name}: {reason}")
        if cls.kind == "weight-perturbation":
            perturbations.append(name)
    if len(perturbations) > 1:
        raise ConfigError(f"at most one weight perturbation per method, got {', '.join(perturbations)}")
