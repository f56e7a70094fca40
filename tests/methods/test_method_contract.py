"""The method contract: typed hyperparameters, the training step as attack then loss
terms, one ``guided`` for BGAT and LBGAT, one reader of ``separate_bn``, and one place where a term joins
a method's loss. The terms' values are checked against the formulas in helpers/method_formulas.py."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from helpers.method_formulas import make_batch, make_method
from lbgat.methods import (
    GuidedMethod,
    LogitRegulariser,
    Method,
    MethodParams,
    add_weighted,
    get_method,
    list_methods,
    method_params,
)
from lbgat.methods.lbgat import LbgatParams

# The names of every method's terms, in the order the logs and checkpoints hold them (as before the refactor).
TERM_NAMES = {
    "natural": ["loss", "ce"],
    "pgd-at": ["loss", "ce_adv"],
    "trades": ["loss", "ce", "kl"],
    "alp": ["loss", "ce_adv", "pairing"],
    "lbgat": ["mse", "ce_teacher", "loss"],
    "lbgat-trades": ["mse", "ce_teacher", "loss", "kl"],
    "lbgat-alp": ["mse", "ce_teacher", "loss", "pairing"],
    "bgat": ["mse", "loss"],
    "bgat-trades": ["mse", "loss", "kl"],
    "bgat-alp": ["mse", "loss", "pairing"],
}


@pytest.mark.parametrize("name", sorted(TERM_NAMES))
def test_every_method_returns_its_named_terms_in_the_same_order(name: str) -> None:
    """The refactor keeps each method's terms and their order."""
    assert list(make_method(name)(make_batch())) == TERM_NAMES[name]


def test_guidance_knobs_add_their_terms_before_the_teachers() -> None:
    """The student CE and the KL guidance keep their places among the terms."""
    terms = make_method("lbgat-trades", {"alpha": 1.0, "guidance": "kl", "student_ce": 0.5})(make_batch())
    assert list(terms) == ["kl_guidance", "ce_student", "ce_teacher", "loss", "kl"]


def test_every_methods_hyperparameters_are_typed_method_params() -> None:
    """Params are a MethodParams dataclass, not ``object``."""
    for method in list_methods():
        assert issubclass(method.Params, MethodParams) and dataclasses.is_dataclass(method.Params), method.name
        assert isinstance(method_params(method.name), MethodParams)


@pytest.mark.parametrize("name", sorted(set(TERM_NAMES) - {"natural"}))
def test_a_step_is_its_attack_then_its_loss_terms(name: str) -> None:
    """The two halves a step wrapper (AWP) calls give the step bit for bit."""
    method = make_method(name)
    halves = copy.deepcopy(method)
    batch = make_batch(seed=3)
    whole = method(batch)
    split = halves.loss_terms(batch, halves.adversarial(batch))
    assert list(split) == list(whole)
    for term, value in whole.items():
        assert torch.equal(split[term], value), term
    whole["loss"].backward()
    split["loss"].backward()
    for ours, theirs in zip(method.parameters(), halves.parameters(), strict=True):
        assert (ours.grad is None) == (theirs.grad is None)
        assert ours.grad is None or torch.equal(ours.grad, theirs.grad)


def test_the_guided_methods_share_one_guided_and_declare_their_regulariser() -> None:
    """BGAT and LBGAT are GuidedMethods with one ``guided``; the +TRADES/+ALP
    combinations name their regulariser, weighted by their params' alpha."""
    guided = {method.name for method in list_methods() if issubclass(method, GuidedMethod)}
    assert guided == {"lbgat", "lbgat-trades", "lbgat-alp", "bgat", "bgat-trades", "bgat-alp"}
    assert guided == {method.name for method in list_methods() if method.uses_teacher}
    for name in guided:
        method = get_method(name)
        assert method.guided is GuidedMethod.guided and method.loss_terms is GuidedMethod.loss_terms, name
        expected = {"trades": "kl", "alp": "pairing"}.get(name.partition("-")[2])
        assert (method.regulariser.name if method.regulariser else None) == expected, name
        if method.regulariser:
            assert "alpha" in {field.name for field in dataclasses.fields(method.Params)}


def test_a_regulariser_without_alpha_is_refused_when_the_class_is_defined() -> None:
    """The weight a guided method's regulariser needs is declared, not probed."""
    with pytest.raises(TypeError, match="has no alpha"):
        class Unweighted(GuidedMethod[LbgatParams]):  # noqa: F841 - defining it is the test
            Params = LbgatParams
            regulariser = LogitRegulariser("pairing", lambda clean, adv: (clean - adv).pow(2).mean())


def test_separate_bn_is_read_in_one_place() -> None:
    """``shares_student_weights`` answers for every method from its typed params."""
    for method in list_methods():
        shares = method.shares_student_weights(method_params(method.name))
        assert shares is False, method.name
    for name in ("lbgat", "lbgat-trades", "lbgat-alp"):
        assert get_method(name).shares_student_weights(method_params(name, {"separate_bn": True})) is True
    method = make_method("lbgat", {"separate_bn": True})
    assert method.teacher.conv.weight is method.student.conv.weight


@pytest.mark.parametrize("name", sorted(TERM_NAMES))
def test_a_term_joins_any_methods_loss_through_add_weighted(name: str) -> None:
    """The seam a regulariser plug-in uses on any host, without per-pair code."""
    method = make_method(name)
    terms = method(make_batch(seed=2))
    before = terms["loss"].detach().clone()
    extra = method.student(make_batch(seed=2).x).pow(2).mean()
    names = list(terms)
    add_weighted(terms, "extra", extra, 0.25)
    assert list(terms) == [*names, "extra"]
    assert torch.equal(terms["loss"].detach(), before + 0.25 * extra.detach())
    assert terms["extra"] is extra


def test_a_frozen_teacher_is_not_among_the_trained_networks() -> None:
    """One rule for every method (BGAT no longer overrides it)."""
    for method in list_methods():
        built = make_method(method.name)
        expected = ["student", "teacher"] if method.uses_teacher and not method.frozen_teacher else ["student"]
        assert list(built.trained_networks()) == expected, method.name
        assert isinstance(built, Method)
