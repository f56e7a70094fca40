"""Sanity checks that go into every report, each with a verdict.

- AutoAttack's own checks (its ``checks`` module, run on a batch of the evaluated images):
  randomness, softmax outputs, zero gradients, dynamic defence; and, when AutoAttack ran, the
  number of classes and "Square beats the white-box attacks".
- eps = 0 gives the clean accuracy.
- On a subset: PGD-100 with 5 restarts, counted per example together with the report's PGD-K (the worst
  case over the six), scores >= PGD-K - max(2 points, 2 binomial standard errors) (else PGD-K is unreliable
  for this model); its best restart alone does not score above PGD-K by more than that (else the attack has
  a bug).
  PGD-K is the report's strongest PGD attack with its own steps and step size (PGD-20 when the
  report has none); with K > 100 the stronger attack takes K steps.
- Logits do not depend on the batch an example is in (the model really is in eval mode).
- The clean predictions are not collapsed to one class (:mod:`.collapse`).

Each result carries a stable ``id`` and, where it measured numbers, ``measured`` (the strength check: both
attacks' accuracies), so that :mod:`.doubts` can say which reported number each verdict casts doubt on.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import model_mode, pgd
from ..runtime.rng import ExampleRNG, Stream
from .autoattack import AA_LOGGER, AAResult, collect_aa_warnings
from .collapse import MIN_EXAMPLES, prediction_share, predictions_of

Verdict = Literal["pass", "warn", "fail", "skipped"]
STRENGTH_RESTARTS = 5
STRENGTH_STEPS = 100


@dataclass(frozen=True)
class CheckResult:
    name: str
    verdict: Verdict
    detail: str
    id: str = ""  # stable across versions (names carry numbers): what doubts.py keys on
    measured: dict[str, Any] | None = None  # the numbers behind the verdict, for scripts and for the marks

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"name": self.name, "verdict": self.verdict, "detail": self.detail}
        if self.id:
            result["id"] = self.id
        if self.measured is not None:
            result["measured"] = self.measured
        return result


@dataclass(frozen=True)
class CheckInputs:
    """The first examples of the evaluation, with everything the checks need to attack them."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor  # dataset indices, for the per-example random starts
    eps: float
    step_size: float
    norm: str
    seed: int
    reference_steps: int = 20  # the report's PGD attack, which the strength check tests
    reference_attack: str | None = None  # its name in the report (None: the report has no PGD attack)


def _aa_message_check(name: str, marker: str, messages: list[str], what: str) -> CheckResult:
    found = [message for message in messages if marker in message]
    key = name.replace(" ", "_").replace("-", "_")
    if found:
        return CheckResult(name, "warn", found[0], key)
    return CheckResult(name, "pass", what, key)


def autoattack_checks(model: nn.Module, inputs: CheckInputs, aa: AAResult | None) -> list[CheckResult]:
    """AutoAttack's checks module on the check batch, plus what its own run logged."""
    from pyautoattack import checks

    logger = logging.getLogger(AA_LOGGER)
    with model_mode(model, "eval"), collect_aa_warnings() as messages:
        checks.check_randomized(model, inputs.x, inputs.y, bs=len(inputs.x), logger=logger)
        checks.check_range_output(model, inputs.x, logger=logger)
        checks.check_dynamic(model, inputs.x, False, logger=logger)
        x = inputs.x.clone().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(x), inputs.y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
        checks.check_zero_gradients(grad, logger=logger)
    messages = messages + (aa.warnings if aa is not None else [])
    results = [
        _aa_message_check("randomness", "randomized defense", messages, "outputs are deterministic"),
        _aa_message_check("softmax outputs", "probability distribution", messages, "outputs are logits"),
        _aa_message_check("zero gradients", "zero gradient", messages, "every input gradient is non-zero"),
        _aa_message_check("dynamic defence", "dynamic defense", messages,
                          "no gradient computation inside the forward pass"),
    ]
    if aa is None:
        results.append(CheckResult("square vs white-box", "skipped", "AutoAttack was not run",
                                   "square_vs_white_box"))
    elif "square" not in aa.attacks:
        results.append(CheckResult("square vs white-box", "skipped", "Square is not in this AutoAttack version",
                                   "square_vs_white_box"))
    else:
        results.append(_aa_message_check("square vs white-box", "Square Attack has decreased", messages,
                                         "Square found no point the white-box attacks missed"))
    if aa is not None:
        results.append(_aa_message_check("number of classes", "target classes", messages + aa.warnings,
                                         f"{aa.n_target_classes} target classes fit the model's outputs"))
    return results


def eps_zero_check(model: nn.Module, inputs: CheckInputs) -> CheckResult:
    rng = ExampleRNG(inputs.seed, 0, inputs.index)
    x_adv = pgd(model, inputs.x, inputs.y, eps=0.0, step_size=inputs.step_size, steps=20, rng=rng, norm=inputs.norm)
    with model_mode(model, "eval"), torch.no_grad():
        clean = int((model(inputs.x).argmax(1) == inputs.y).sum())
        attacked = int((model(x_adv).argmax(1) == inputs.y).sum())
    if torch.equal(x_adv, inputs.x) and clean == attacked:
        return CheckResult("eps = 0 gives clean accuracy", "pass", f"PGD-20 at eps 0: {attacked}/{len(inputs.y)}, "
                           f"clean {clean}/{len(inputs.y)}, inputs unchanged", "eps_zero")
    return CheckResult("eps = 0 gives clean accuracy", "fail",
                       f"PGD-20 at eps 0 gave {attacked}/{len(inputs.y)} vs clean {clean}/{len(inputs.y)}", "eps_zero")


def _robust_under_pgd(model: nn.Module, inputs: CheckInputs, steps: int, stream: int) -> torch.Tensor:
    rng = ExampleRNG(inputs.seed, 0, inputs.index)
    x_adv = pgd(model, inputs.x, inputs.y, eps=inputs.eps, step_size=inputs.step_size, steps=steps, rng=rng,
                stream=stream, norm=inputs.norm)
    with model_mode(model, "eval"), torch.no_grad():
        return model(x_adv).argmax(1) == inputs.y


def strength_check_name(inputs: CheckInputs) -> str:
    return f"PGD-{_strong_steps(inputs)} x {STRENGTH_RESTARTS} restarts vs PGD-{inputs.reference_steps}"


def _strong_steps(inputs: CheckInputs) -> int:
    return max(STRENGTH_STEPS, inputs.reference_steps)


def strength_check(model: nn.Module, inputs: CheckInputs) -> CheckResult:
    """PGD-100 (or longer) with 5 restarts against the report's PGD attack on the check subset.

    The stronger attack's accuracy is the worst case per example over the report's own PGD-K and the five
    restarts (as AutoAttack counts an ensemble), so it can never exceed PGD-K's: a longer attack from other
    random starts may miss a point PGD-K found (a 1-point "rise" on 100 examples is that, not a bug). A bug is
    a longer attack that is clearly weaker on its own: even its best restart scores above PGD-K by more than
    the allowed gap."""
    name = strength_check_name(inputs)
    reference, strong_steps = f"PGD-{inputs.reference_steps}", _strong_steps(inputs)
    count = len(inputs.y)
    robust = _robust_under_pgd(model, inputs, inputs.reference_steps, Stream.EVAL_ATTACK_START)
    weak = int(robust.sum())
    best_restart = count
    for restart in range(STRENGTH_RESTARTS):
        survived = _robust_under_pgd(model, inputs, strong_steps, Stream.CHECK_RESTARTS + restart)
        best_restart = min(best_restart, int(survived.sum()))
        robust = robust & survived
    strong = int(robust.sum())
    weak_accuracy, strong_accuracy, restart_accuracy = weak / count, strong / count, best_restart / count
    standard_error = math.sqrt(weak_accuracy * (1 - weak_accuracy) / count)
    allowance = max(0.02, 2 * standard_error)
    measured = {"n": count, "tested_attack": inputs.reference_attack, "tested_steps": inputs.reference_steps,
                "tested_accuracy": weak_accuracy, "strong_steps": strong_steps, "restarts": STRENGTH_RESTARTS,
                "strong_accuracy": strong_accuracy, "best_restart_accuracy": restart_accuracy,
                "allowed_gap": allowance}
    figures = (f"on {count} examples: {reference} {100 * weak_accuracy:.2f}%, PGD-{strong_steps}x{STRENGTH_RESTARTS} "
               f"{100 * strong_accuracy:.2f}% (worst case with {reference}; its best restart alone "
               f"{100 * restart_accuracy:.2f}%; allowed gap {100 * allowance:.2f} points)")
    if restart_accuracy > weak_accuracy + allowance:
        return CheckResult(name, "fail", f"the stronger attack scored HIGHER, so the attack has a bug: {figures}",
                           "strength", measured)
    if strong_accuracy < weak_accuracy - allowance:
        return CheckResult(name, "warn", f"{reference} IS UNRELIABLE FOR THIS MODEL (a stronger PGD finds many "
                                         f"more adversarial examples; suspect gradient masking): {figures}",
                           "strength", measured)
    return CheckResult(name, "pass", figures, "strength", measured)


def batch_tolerance(dtype: torch.dtype) -> float:
    """Relative logit difference allowed between batchings: 1e-4 in fp32; under bf16/fp16 autocast
    eight units in the last place of the dtype (a kernel chosen for another batch size rounds
    differently; train-mode BatchNorm changes logits by far more, O(1))."""
    if dtype == torch.float32:
        return 1e-4
    return 8 * torch.finfo(dtype).eps


def batch_independence_check(model: nn.Module, inputs: CheckInputs) -> CheckResult:
    """Logits of an example alone, in a batch, and in a reversed batch agree (eval mode really on)."""
    name = "logits independent of the batch"
    with model_mode(model, "eval"), torch.no_grad():
        together = model(inputs.x)
        reversed_order = model(inputs.x.flip(0)).flip(0)
        alone = torch.cat([model(inputs.x[i:i + 1]) for i in range(min(len(inputs.x), 8))])
    difference = max((together - reversed_order).abs().max().item(),
                     (together[:len(alone)] - alone).abs().max().item())
    dtype = getattr(model, "autocast_dtype", torch.float32)  # an AutocastModel says what it runs in
    tolerance = batch_tolerance(dtype) * max(1.0, together.abs().max().item())
    detail = f"max logit difference {difference:.2e} (tolerance {tolerance:.1e})"
    if difference <= tolerance:
        return CheckResult(name, "pass", detail, "batch_independence")
    return CheckResult(name, "fail", f"outputs depend on the batch (train-mode BatchNorm?): {detail}",
                       "batch_independence")


COLLAPSE_CHECK = "predictions not collapsed to one class"


def collapse_check(model: nn.Module, inputs: CheckInputs) -> CheckResult:
    """The share of the check subset's clean predictions in the most predicted class (see :mod:`.collapse`)."""
    predictions, num_classes = predictions_of(model, [inputs.x])
    share = prediction_share(predictions, inputs.y, num_classes)
    verdict = share.verdict
    detail = share.describe("test images")
    if verdict == "skipped":
        detail = f"needs at least {MIN_EXAMPLES} examples, the check subset has {share.n} (--check-n)"
    elif verdict == "fail":
        detail = f"the model has COLLAPSED to one class: {detail}"
    elif verdict == "warn":
        detail = f"the predictions lean on one class: {detail}"
    return CheckResult(COLLAPSE_CHECK, verdict, detail, "collapse", share.to_dict())


def run_checks(model: nn.Module, inputs: CheckInputs, *, aa: AAResult | None, strength: bool) -> list[CheckResult]:
    results = autoattack_checks(model, inputs, aa)
    results.append(eps_zero_check(model, inputs))
    if strength and len(inputs.y):
        results.append(strength_check(model, inputs))
    else:
        results.append(CheckResult(strength_check_name(inputs), "skipped", "--check-n 0", "strength"))
    results.append(batch_independence_check(model, inputs))
    results.append(collapse_check(model, inputs))
    return results
