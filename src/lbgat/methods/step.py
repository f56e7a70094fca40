"""One training step as a regulariser plug-in sees it: the student's forwards the host named, and the ones
the plug-in makes itself, as its declaration allows.

A host makes every student forward of its loss through :class:`Forwards` and names those a plug-in may
reuse (``clean``: f(x), ``adv``: f(x')), a joint forward (ALP's f([x, x'])) by the rows of each. A
regulariser declares which forwards it uses (:class:`ForwardNeeds`); the pair is checked when the method
is built, so that a step never falls back to a forward of its own that nobody declared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from ..data.loader import Batch

LossTerms = dict[str, torch.Tensor]  # a step's named terms; "loss" is the one optimised

CLEAN = "clean"  # f(x), the student on the clean batch
ADV = "adv"  # f(x'), the student on the training attack's output
ForwardName = str


class Tap(Protocol):
    """A reading of one inner layer of a network during one forward (VFD's features)."""

    def reading(self, network: nn.Module) -> AbstractContextManager[Callable[[], torch.Tensor]]:
        """While open, the layer's value in ``network``'s forward is kept; the callable returns it."""
        ...


@dataclass(frozen=True)
class Forward:
    """One forward of the student: its logits and each tap's reading (rows of a joint forward: sliced)."""

    logits: torch.Tensor
    readings: Mapping[Tap, torch.Tensor] = field(default_factory=dict)

    def rows(self, part: slice) -> Forward:
        return Forward(self.logits[part], {tap: value[part] for tap, value in self.readings.items()})


class Forwards:
    """The student's forwards in one step: each one made here, with the taps read, and the ones a host
    names kept under their names."""

    def __init__(self, network: nn.Module, taps: Sequence[Tap] = ()) -> None:
        self.network = network
        self.taps = tuple(taps)
        self.named: dict[ForwardName, Forward] = {}

    def run(self, inputs: torch.Tensor, name: ForwardName | None = None) -> torch.Tensor:
        """The network's logits on ``inputs``; kept as ``name`` when given (a forward with a graph that a
        plug-in may reuse instead of making its own)."""
        forward = self.make(inputs)
        if name is not None:
            self.keep(name, forward)
        return forward.logits

    def joint(self, inputs: torch.Tensor, rows: Mapping[ForwardName, slice]) -> torch.Tensor:
        """One forward over inputs stacked along the batch, each part named by its rows (ALP's [x, x'])."""
        forward = self.make(inputs)
        for name, part in rows.items():
            self.keep(name, forward.rows(part))
        return forward.logits

    def make(self, inputs: torch.Tensor) -> Forward:
        if not self.taps:
            return Forward(self.network(inputs))
        with ExitStack() as stack:
            reads = [(tap, stack.enter_context(tap.reading(self.network))) for tap in self.taps]
            logits = self.network(inputs)
        return Forward(logits, {tap: read() for tap, read in reads})

    def keep(self, name: ForwardName, forward: Forward) -> None:
        if name in self.named:
            raise RuntimeError(f"two forwards are named {name!r} in one step")
        self.named[name] = forward


@dataclass(frozen=True)
class HostStep:
    """A host's loss on one batch: its named terms, and its forwards (the named ones for the plug-ins)."""

    terms: LossTerms
    forwards: Forwards


@dataclass(frozen=True)
class ForwardNeeds:
    """The student forwards a regulariser uses in one step, by where each comes from.

    ``host``: the host's own (a host that does not name one is refused when the method is built);
    ``host_or_own``: the host's where it names them, else one the plug-in makes itself, updating BatchNorm's
    statistics as its official code does (RPAT's f(x) after PGD-AT); ``own``: forwards only the plug-in makes
    (RPAT's f(x_mid)), BatchNorm-updating too."""

    host: frozenset[ForwardName] = frozenset()
    host_or_own: frozenset[ForwardName] = frozenset()
    own: frozenset[ForwardName] = frozenset()

    def missing_from(self, named: frozenset[ForwardName]) -> list[ForwardName]:
        """The forwards it takes only from a host, which a host naming ``named`` does not make."""
        return sorted(self.host - named)


@dataclass(frozen=True)
class StepView:
    """What a regulariser sees of one step: the batch, x', the step's forwards and its own declaration."""

    batch: Batch
    x_adv: torch.Tensor
    forwards: Forwards
    needs: ForwardNeeds

    def forward(self, name: ForwardName) -> Forward:
        """The host's forward ``name``; where the host has none and the declaration allows, one made now on
        its input and kept under the name (a second plug-in asking for it reuses it)."""
        found = self.forwards.named.get(name)
        if found is not None:
            return found
        if name not in self.needs.host_or_own:
            raise RuntimeError(f"no forward {name!r} in this step, and the plug-in does not declare it may make it")
        self.forwards.run(self.inputs(name), name)
        return self.forwards.named[name]

    def own(self, name: ForwardName, inputs: torch.Tensor) -> Forward:
        """A forward only this plug-in makes (declared in ``needs.own``), never shared."""
        if name not in self.needs.own:
            raise RuntimeError(f"the plug-in makes a forward {name!r} it does not declare")
        return self.forwards.make(inputs)

    def inputs(self, name: ForwardName) -> torch.Tensor:
        return {CLEAN: self.batch.x, ADV: self.x_adv}[name]

    def logits(self, name: ForwardName) -> torch.Tensor:
        return self.forward(name).logits


class RegulariserPart(Protocol):
    """What a host's step uses of a regulariser plug-in (lbgat.methods.plugin.Regulariser), seen from the host:
    the host never imports the plug-ins, so that a plug-in is one file that depends on its hosts, not back."""

    name: str
    params: Any

    def taps(self) -> Sequence[Tap]: ...

    def weight(self, epoch: int) -> float: ...

    def forward_needs(self, params: Any) -> ForwardNeeds: ...

    def term(self, step: StepView) -> torch.Tensor: ...


class PerturbationPart(Protocol):
    """What a host's step uses of a weight-perturbation plug-in (lbgat.methods.plugin.WeightPerturbation)."""

    def perturb(self, method: Any, batch: Batch, x_adv: torch.Tensor) -> None: ...

    def restore(self) -> None: ...


class PluginPart(Protocol):
    """What a host does with any plug-in it is given: tell its kind and attach it."""

    kind: str

    def attach(self, method: Any) -> None: ...
