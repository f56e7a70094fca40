"""Boundary guidance: how the robust model's adversarial logits are pulled towards the natural model's
clean logits (LBGAT Eq. 3, and the ablations of its Table 1), shared by the LBGAT and BGAT families
(through :class:`~lbgat.methods.guided.GuidedMethod`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .base import MethodParams

Guidance = Literal["mse", "kl", "kl-reverse"]
Reduction = Literal["mean", "sum"]


@dataclass(frozen=True)
class GuidanceParams(MethodParams):
    """guidance: mse (Eq. 3), kl = KL(P_r(x') || P_n(x)) (Table 1 "(KL)", the CVPR draft's L4
        direction), or kl-reverse = KL(P_n(x) || P_r(x')) (the distillation direction).
    mse_reduction: mean over B x C (the official code) or sum over classes, mean over the batch
        (C times larger; the per-example squared distance).
    student_ce: weight of an extra CE(M_r(x'), y) on the student (Table 1 "w/"; 0 = the paper's "w/o").
    detach_teacher: stop the guidance term's gradient into the teacher (not in the paper; for study).
    """

    guidance: Guidance = "mse"
    mse_reduction: Reduction = "mean"
    student_ce: float = 0.0
    detach_teacher: bool = False


def guidance_terms(logits_adv: torch.Tensor, logits_teacher: torch.Tensor, labels: torch.Tensor,
                   params: GuidanceParams) -> dict[str, torch.Tensor]:
    """The guidance term under its own name (``mse``, ``kl_guidance``) and, if asked for, ``ce_student``."""
    target = logits_teacher.detach() if params.detach_teacher else logits_teacher
    terms: dict[str, torch.Tensor] = {}
    if params.guidance == "mse":
        if params.mse_reduction == "mean":
            terms["mse"] = F.mse_loss(logits_adv, target)
        else:
            terms["mse"] = (logits_adv - target).pow(2).sum(dim=1).mean()
    else:
        student, teacher = F.log_softmax(logits_adv, dim=1), F.log_softmax(target, dim=1)
        if params.guidance == "kl":
            terms["kl_guidance"] = F.kl_div(teacher, student, reduction="batchmean", log_target=True)
        else:
            terms["kl_guidance"] = F.kl_div(student, teacher, reduction="batchmean", log_target=True)
    if params.student_ce:
        terms["ce_student"] = F.cross_entropy(logits_adv, labels)
    return terms


def guidance_loss(terms: dict[str, torch.Tensor], params: GuidanceParams) -> torch.Tensor:
    """The guidance part of the loss: the guidance term plus the weighted student CE."""
    loss = terms["mse"] if "mse" in terms else terms["kl_guidance"]
    if "ce_student" in terms:
        loss = loss + params.student_ce * terms["ce_student"]
    return loss


def pairing_mse(logits_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """ALP's logit pairing: MSE(M(x'), M(x)), the mean over B x C, into both logits."""
    return F.mse_loss(logits_adv, logits_clean)
