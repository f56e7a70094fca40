"""What every training method is: a loss on one batch, returning its named terms."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

import torch
from torch import nn

from ..attacks import BNMode, Iterate, Objective, Start, pgd
from ..attacks.input_only import input_only
from ..data.loader import Batch
from ..errors import ConfigError
from ..runtime.rng import Stream
from .lifecycle import RunFacts
from .step import (
    ForwardName,
    Forwards,
    HostStep,
    LossTerms,
    PerturbationPart,
    PluginPart,
    RegulariserPart,
    StepView,
    Tap,
)


@dataclass(frozen=True)
class TrainAttack:
    """The attack a method trains against (L-infinity PGD; objective chosen by the method)."""

    eps: float
    step_size: float
    steps: int
    start: Start
    start_std: float = 0.001
    bn_mode: BNMode = "eval"
    objective: Objective | None = None  # None: the method's own (its ``attack_objective``)
    iterate: Iterate = "x"  # "delta": AT_AWP's arithmetic (lbgat.attacks.pgd)
    compiled: bool = False  # the attack's step and projection as one torch.compile'd kernel
    compile_mode: str = "default"  # torch.compile's mode for it (lbgat.runtime.compilation)


"""A method's named scalar terms on one batch. ``"loss"`` is what the optimiser minimises; the others are
what it is made of, logged under their names in this order."""


class SettingOutOfRange(ConfigError):
    """A method's or plug-in's number out of its range; the factory names it with its dotted key."""

    def __init__(self, field: str, value: object) -> None:
        super().__init__(f"{field} must be a finite number >= 0, got {value!r}")
        self.field, self.value = field, value


@dataclass(frozen=True)
class MethodParams:
    """What every method's hyperparameters are: a frozen dataclass, its fields named as in the method's paper.

    Every number in them (a weight, a rate, a size, or a list of them) must be finite and >= 0; a subclass
    with checks of its own calls ``super().__post_init__()``."""

    def __post_init__(self) -> None:
        for entry in dataclasses.fields(self):
            value = getattr(self, entry.name)
            for number in value if isinstance(value, list) else [value]:
                if isinstance(number, int | float) and not isinstance(number, bool) and not (
                        math.isfinite(number) and number >= 0):
                    raise SettingOutOfRange(entry.name, number)


@dataclass(frozen=True)
class NoParams(MethodParams):
    """A method without hyperparameters of its own."""


P = TypeVar("P", bound=MethodParams)


def add_weighted(terms: LossTerms, name: str, value: torch.Tensor, weight: float) -> LossTerms:
    """Where a term joins a method's loss from outside its own formula (a regulariser: the +TRADES KL and
    the +ALP pairing of the guided methods; a plug-in on any host): recorded under ``name`` after the
    method's own terms, and ``loss`` becomes ``loss + weight * value``."""
    terms[name] = value
    terms["loss"] = terms["loss"] + weight * value
    return terms


class Method(nn.Module, Generic[P]):
    """A training method: owns the student, any extra networks, and computes the batch loss.

    Subclasses set ``name``, ``description``, ``Params`` (a :class:`MethodParams` dataclass, also the
    class's type argument: ``Method[TradesParams]``), ``attack_objective`` / ``default_start`` for their
    training attack, and ``uses_teacher``. One training step is :meth:`forward`: the training attack on
    the student at the current weights (:meth:`adversarial`), then the host's loss on its output
    (:meth:`host_step`: the named terms, :data:`LossTerms`, and the student's forwards it named), then each
    regulariser plug-in's term on those forwards. A host implements :meth:`host_terms`, making every student
    forward through the :class:`~lbgat.methods.step.Forwards` it is given and naming the ones
    :meth:`named_forwards` declares. A method without a training attack (``natural``) implements
    :meth:`forward` instead.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[MethodParams]] = NoParams
    params: P
    attack_objective: ClassVar[Objective | None] = None
    default_start: ClassVar[Start] = "uniform"
    default_bn_mode: ClassVar[BNMode] = "eval"  # BatchNorm's mode in the training attack (attack.bn_mode auto)
    uses_teacher: ClassVar[bool] = False
    frozen_teacher: ClassVar[bool] = False  # loaded from checkpoints, never trained (BGAT)
    default_warmup: ClassVar[bool] = False
    accepts_plugins: ClassVar[bool] = True  # False: the method composes its own parts (ISEAT)

    def __init__(self, student: nn.Module, params: P, attack: TrainAttack | None,
                 teacher: nn.Module | None = None, plugins: Sequence[PluginPart] = ()) -> None:
        super().__init__()
        if not isinstance(params, self.Params):
            raise TypeError(f"{self.name} expects {self.Params.__name__}, got {type(params).__name__}")
        if self.uses_teacher and teacher is None:
            raise ValueError(f"{self.name} needs a teacher network")
        if self.attack_objective is not None and attack is None:
            raise ValueError(f"{self.name} needs a training attack")
        self.student = student
        self.teacher = teacher
        self.params = params
        self.attack = attack
        # Regularisers are modules (VFD's frozen teacher is saved with the run); at most one weight
        # perturbation (lbgat.methods.plugin.check_combination), which holds no state between steps.
        self.regularisers = nn.ModuleList([p for p in plugins if p.kind == "regulariser"])
        perturbations = [p for p in plugins if p.kind == "weight-perturbation"]
        self.weight_perturbation: PerturbationPart | None = perturbations[0] if perturbations else None
        for plugin in plugins:
            plugin.attach(self)

    @classmethod
    def check_run(cls, params: MethodParams, run: RunFacts) -> None:
        """Refuse, in one line and before any work, a run this method cannot train (by default: none)."""

    @classmethod
    def named_forwards(cls, params: MethodParams) -> frozenset[ForwardName]:
        """The student forwards with a graph that :meth:`host_terms` names under ``params`` (``clean``, ``adv``):
        what a regulariser plug-in may take from this host instead of making its own."""
        return frozenset()

    def forward(self, batch: Batch) -> LossTerms:
        """One step's terms: the training attack at the current weights; then, with a weight perturbation,
        the weights moved (:meth:`after_step` moves them back once the optimiser has stepped); then the
        host's terms and each regulariser's, in the order the plug-ins were given."""
        x_adv = self.adversarial(batch)
        if self.weight_perturbation is not None:
            self.weight_perturbation.perturb(self, batch, x_adv)
        taps = [tap for plugin in self.regularisers for tap in plugin.taps()]
        step = self.host_step(batch, x_adv, taps)
        for plugin in self.regularisers:
            regulariser: RegulariserPart = plugin  # type: ignore[assignment]
            weight = regulariser.weight(batch.epoch)
            if weight:
                view = StepView(batch, x_adv, step.forwards, regulariser.forward_needs(regulariser.params))
                add_weighted(step.terms, regulariser.name, regulariser.term(view), weight)
            else:  # not active in this epoch: no forwards, the term logged as 0
                step.terms[regulariser.name] = torch.zeros((), device=batch.x.device)
        return step.terms

    def after_step(self) -> None:
        """Called after each optimiser step (taken or skipped): a weight perturbation is removed here."""
        if self.weight_perturbation is not None:
            self.weight_perturbation.restore()

    def weight_ascent_loss(self, network: nn.Module, batch: Batch, x_adv: torch.Tensor) -> torch.Tensor:
        """The loss a weight perturbation ascends, on ``network`` (a copy of the student): the method's own
        loss with its forwards made by ``network``, as AWP does for its AT and TRADES hosts."""
        return self.host_terms(batch, x_adv, Forwards(network))["loss"]

    def host_step(self, batch: Batch, x_adv: torch.Tensor, taps: Sequence[Tap] = ()) -> HostStep:
        """The host's terms on ``batch`` and ``x_adv`` with its forwards of the student (``taps`` read in each)."""
        forwards = Forwards(self.student, taps)
        return HostStep(self.host_terms(batch, x_adv, forwards), forwards)

    def loss_terms(self, batch: Batch, x_adv: torch.Tensor) -> LossTerms:
        """The host's named terms alone (the second half of a step, for a loop of one's own)."""
        return self.host_step(batch, x_adv).terms

    def host_terms(self, batch: Batch, x_adv: torch.Tensor,
                   forwards: Forwards) -> LossTerms:  # pragma: no cover - abstract
        """The method's named terms on ``batch`` and its adversarial input ``x_adv``; every student forward
        made through ``forwards``, those of :meth:`named_forwards` under their names."""
        raise NotImplementedError

    @classmethod
    def shares_student_weights(cls, params: MethodParams) -> bool:
        """Whether the teacher is the student with BatchNorm of its own (LBGAT's separate-BN ablation):
        then it has the student's architecture and no weights of its own but BatchNorm's."""
        return False

    def adversarial(self, batch: Batch) -> torch.Tensor:
        """The method's training attack on the student (in the attack's BN mode). Under --compile the
        attack runs the compiled student with its weights frozen, so its backward skips the weight
        gradients (lbgat.attacks.input_only)."""
        assert self.attack is not None and self.attack_objective is not None
        return pgd(
            input_only(self.student), batch.x, batch.y,
            eps=self.attack.eps, step_size=self.attack.step_size, steps=self.attack.steps,
            objective=self.attack.objective or self.attack_objective, start=self.attack.start,
            start_std=self.attack.start_std,
            rng=batch.rng, stream=Stream.TRAIN_ATTACK_START, bn_mode=self.attack.bn_mode,
            iterate=self.attack.iterate, compiled=self.attack.compiled, compile_mode=self.attack.compile_mode,
        )

    def trained_networks(self) -> dict[str, nn.Module]:
        """The networks the optimiser updates, by name (one SGD parameter group each)."""
        networks = {"student": self.student}
        if self.teacher is not None and not self.frozen_teacher:
            networks["teacher"] = self.teacher
        return networks
