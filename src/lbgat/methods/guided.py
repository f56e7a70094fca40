"""What a guided method is (BGAT, LBGAT and their +TRADES / +ALP combinations): the student's adversarial
logits pulled towards a teacher's clean logits (LBGAT Eqs. 2 and 3), plus an optional regulariser on the
student's clean and adversarial logits weighted by alpha (Eqs. 4 and 5, their first term replaced)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, ClassVar, Protocol, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..data.loader import Batch
from .base import LossTerms, Method, MethodParams, add_weighted
from .guidance import GuidanceParams, guidance_loss, guidance_terms, pairing_mse
from .step import ADV, CLEAN, ForwardName, Forwards
from .trades import kl_batchmean


@dataclasses.dataclass(frozen=True)
class LogitRegulariser:
    """A term on the student's clean and adversarial logits that a guided method adds to its loss."""

    name: str  # its name among the loss terms
    term: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits_clean, logits_adv) -> scalar


TRADES_KL = LogitRegulariser("kl", kl_batchmean)  # (1/B) sum KL(P_r(x) || P_r(x')), TRADES' boundary term
ALP_PAIRING = LogitRegulariser("pairing", pairing_mse)  # MSE(M_r(x'), M_r(x)), ALP's logit pairing


class Regularised(Protocol):
    """The hyperparameters of a guided method with a regulariser: ``alpha`` is its weight (the paper's alpha)."""

    @property
    def alpha(self) -> float: ...


GP = TypeVar("GP", bound=GuidanceParams)


class GuidedMethod(Method[GP]):
    """A student guided by a teacher's clean logits.

    Subclasses say what the teacher does: frozen (``frozen_teacher``; BGAT), or trained jointly through
    its own CE, weighted by :meth:`teacher_ce_weight` (LBGAT's beta). A subclass with a ``regulariser``
    adds it with weight ``params.alpha``; its ``Params`` must have an ``alpha`` (checked when the class
    is defined).
    """

    uses_teacher = True
    regulariser: ClassVar[LogitRegulariser | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.regulariser is not None and "alpha" not in {field.name for field in dataclasses.fields(cls.Params)}:
            raise TypeError(f"{cls.__name__} adds {cls.regulariser.name!r} with weight alpha, "
                            f"but {cls.Params.__name__} has no alpha")

    def teacher_ce_weight(self) -> float | None:
        """The weight of the teacher's CE(M_n(x), y) in the loss; None: the teacher is not trained here."""
        return None

    def guided(self, batch: Batch, logits_adv: torch.Tensor) -> LossTerms:
        """The guidance terms, the teacher's CE where it learns (``ce_teacher``) and their weighted sum
        (``loss``). The teacher sees the clean batch in train mode (the official code never switches it to
        eval; a frozen teacher stays in eval mode whatever it is told)."""
        assert self.teacher is not None
        self.teacher.train()
        logits_teacher = self.teacher(batch.x)
        terms = guidance_terms(logits_adv, logits_teacher, batch.y, self.params)
        beta = self.teacher_ce_weight()
        if beta is not None:
            terms["ce_teacher"] = F.cross_entropy(logits_teacher, batch.y)
        loss = guidance_loss(terms, self.params)
        terms["loss"] = loss if beta is None else loss + beta * terms["ce_teacher"]
        return terms

    def weight_ascent_loss(self, network: nn.Module, batch: Batch, x_adv: torch.Tensor) -> torch.Tensor:
        """What AWP ascends on a guided host: the student's part of the loss (the guidance towards the
        teacher's logits, plus the regulariser), with ``network`` as the student. The teacher's logits are
        taken without a graph and without touching its BatchNorm statistics (a forward on copies of its
        buffers), so the teacher's own step is the same as without AWP."""
        assert self.teacher is not None
        self.teacher.train()
        with torch.no_grad():
            buffers = {name: buffer.clone() for name, buffer in self.teacher.named_buffers()}
            logits_teacher = functional_call(self.teacher, buffers, (batch.x,), strict=False)
        logits_adv = network(x_adv)
        loss = guidance_loss(guidance_terms(logits_adv, logits_teacher, batch.y, self.params), self.params)
        alpha = cast(Regularised, self.params).alpha if self.regulariser is not None else 0.0
        if self.regulariser is not None and alpha != 0:
            loss = loss + alpha * self.regulariser.term(network(batch.x), logits_adv)
        return loss

    @classmethod
    def named_forwards(cls, params: MethodParams) -> frozenset[ForwardName]:
        """f(x') always; f(x) where the regulariser's weight is not 0 (at 0 it has no graph to share)."""
        if cls.regulariser is None or cast(Regularised, params).alpha == 0:
            return frozenset({ADV})
        return frozenset({CLEAN, ADV})

    def host_terms(self, batch: Batch, x_adv: torch.Tensor, forwards: Forwards) -> LossTerms:
        """Forwards in the official LBGAT order: student(x'), student(x) (for the regulariser), teacher(x)."""
        logits_adv = forwards.run(x_adv, ADV)
        if self.regulariser is None:
            return self.guided(batch, logits_adv)
        alpha = cast(Regularised, self.params).alpha
        # At alpha = 0 (LBGAT's headline setting) the clean forward only updates BatchNorm's running
        # statistics, as in the official code; without a graph its weight-0 term adds exactly +-0 to every
        # gradient it would have reached, so the step is bit-identical
        # (tests/methods/test_alpha_zero_builds_no_clean_graph.py).
        with torch.no_grad() if alpha == 0 else nullcontext():
            logits_clean = forwards.run(batch.x, None if alpha == 0 else CLEAN)
        terms = self.guided(batch, logits_adv)
        return add_weighted(terms, self.regulariser.name, self.regulariser.term(logits_clean, logits_adv), alpha)
