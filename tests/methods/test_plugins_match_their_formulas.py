"""Plug-ins: RPAT, VFD-Adv and AWP on every host the registry allows, each against an
independent computation of its formula in the spec (values, gradients, BatchNorm statistics), the frozen
VFD teacher staying frozen, the AWP perturbation gone after the step, and the refusals."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.method_formulas import (
    STEPS,
    BNNet,
    cross_entropy,
    kl_batchmean,
    make_batch,
    reference_attack,
    reference_awp_directions,
    reference_iseat,
)
from helpers.plugin_builds import build
from lbgat.config import build_config, config_to_yaml
from lbgat.errors import ConfigError
from lbgat.methods import list_methods
from lbgat.methods.plugin import list_plugins
from lbgat.methods.rpat import paper_lambda
from lbgat.train.setup import validate

LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4

PAIRS = [(method.name, plugin.name) for method in list_methods() for plugin in list_plugins()
         if plugin.refuses(method) is None]


def sgd(parameters) -> torch.optim.SGD:
    return torch.optim.SGD(parameters, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def test_the_pairs_cover_every_host_with_an_attack_and_no_other() -> None:
    hosts = {host for host, _ in PAIRS}
    assert hosts == {m.name for m in list_methods() if m.attack_objective and m.accepts_plugins}
    assert {"pgd-at", "trades", "mart", "lbgat-trades"} <= hosts and "natural" not in hosts and "iseat" not in hosts


@pytest.mark.parametrize(("host", "plugin"), PAIRS)
def test_every_allowed_pair_takes_a_step_and_leaves_no_perturbation(host: str, plugin: str) -> None:
    """A test parametrised over every (host, plug-in) pair the registry allows."""
    method = build(host, {plugin: {}})
    optimizer = sgd([p for net in method.trained_networks().values() for p in net.parameters()])
    before = {k: v.clone() for k, v in method.student.state_dict().items()}
    terms = method(make_batch(seed=3))
    assert torch.isfinite(terms["loss"])
    if plugin != "awp":
        assert list(terms)[-1] == plugin  # recorded after the host's own terms
    optimizer.zero_grad()
    terms["loss"].backward()
    optimizer.step()
    method.after_step()
    assert not getattr(method.weight_perturbation, "weights", None) or not method.weight_perturbation.weights.applied
    after = method.student.state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in before if "weight" in k)


# --- RPAT (spec 11.1 / 11.2) ------------------------------------------------------------------------

def reference_rpat(host: str, student: nn.Module, batch, lam: float, r: float) -> dict[str, torch.Tensor]:
    """The official forwards: PGD-AT f(x'), f(x_mid), f(x); TRADES f(x), f(x'), f(x), f(x_mid);
    MART f(x), f(x'), f(x_mid). f(x) and f(x') of the host are the ones the term uses."""
    x, y = batch.x, batch.y
    if host == "pgd-at":
        x_adv = reference_attack(student, batch, "ce", "uniform")
        logits_adv = student(x_adv)
        terms = {"ce_adv": cross_entropy(logits_adv, y)}
        loss = terms["ce_adv"]
        logits_mid = student(r * x + (1 - r) * x_adv)
        logits_clean = student(x)
    elif host == "trades":
        x_adv = reference_attack(student, batch, "kl", "normal")
        logits_clean = student(x)
        logits_adv = student(x_adv)
        terms = {"ce": cross_entropy(logits_clean, y), "kl": kl_batchmean(student(x), logits_adv)}
        loss = terms["ce"] + 6.0 * terms["kl"]
        logits_mid = student(r * x + (1 - r) * x_adv)
    else:
        raise AssertionError(host)
    terms["rpat"] = ((logits_mid - (r * logits_clean + (1 - r) * logits_adv)) ** 2).mean()
    return {"loss": loss + lam * terms["rpat"], **terms}


@pytest.mark.parametrize("host", ["pgd-at", "trades"])
@pytest.mark.parametrize(("lam", "r"), [(1.0, 0.5), (2.5, 0.3)])
def test_rpat_matches_its_formula_with_the_official_forwards(host: str, lam: float, r: float) -> None:
    method = build(host, {"rpat": {"lam": lam, "r": r}})
    reference = copy.deepcopy(method)
    batch = make_batch(seed=2)
    terms = method(batch)
    expected = reference_rpat(host, reference.student, batch, lam, r)
    assert set(terms) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value, rtol=1e-5, atol=1e-6, msg=name)
    terms["loss"].backward()
    expected["loss"].backward()
    for (name, ours), theirs in zip(method.student.named_parameters(), reference.student.parameters(), strict=True):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-6, msg=name)
    for (name, ours), theirs in zip(method.student.named_buffers(), reference.student.buffers(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-7, msg=name)  # same forwards, same order


def test_rpat_is_off_before_its_start_epoch_and_costs_no_forward() -> None:
    method = build("pgd-at", {"rpat": {"start_epoch": 5}})
    forwards: list[int] = []
    method.student.register_forward_hook(lambda *args: forwards.append(1))
    terms = method(make_batch())  # epoch 2
    assert terms["rpat"].item() == 0.0 and len(forwards) == STEPS + 1
    torch.testing.assert_close(terms["loss"], terms["ce_adv"])


def test_rpat_lambda_on_the_paper_scale() -> None:
    """Spec 11.1: paper-lambda = code-lambda * a^2 (1-a)^2 with a = 1 - r; code lam 1 at r 0.5 is 1/16."""
    assert paper_lambda(1.0, 0.5) == pytest.approx(1 / 16)
    assert paper_lambda(2.0, 0.25) == pytest.approx(2.0 * 0.75**2 * 0.25**2)


# --- VFD-Adv (spec 9.4, a reconstruction) -----------------------------------------------------------

def penultimate_features(net: BNNet, x: torch.Tensor) -> torch.Tensor:
    return F.relu(net.bn(net.conv(x))).flatten(1)


@pytest.mark.parametrize(("distance", "clean"), [("mse", True), ("cosine", True), ("mse", False)])
def test_vfd_matches_its_formula_and_the_teacher_stays_frozen(distance: str, clean: bool) -> None:
    method = build("pgd-at", {"vfd": {"distance": distance, "clean": clean, "lam": 0.7}})
    vfd = method.regularisers[0]
    teacher_before = copy.deepcopy(vfd.teacher.state_dict())
    reference = copy.deepcopy(method)
    batch = make_batch(seed=4)
    terms = method(batch)

    student, teacher = reference.student, reference.regularisers[0].teacher
    x_adv = reference_attack(student, batch, "ce", "uniform")
    logits_adv = student(x_adv)
    features_adv = penultimate_features(student, x_adv)  # same batch statistics as the forward above
    with torch.no_grad():
        target = penultimate_features(teacher.eval(), batch.x)

    def distance_of(a: torch.Tensor) -> torch.Tensor:
        if distance == "mse":
            return ((a - target) ** 2).mean()
        return (1 - (a * target).sum(1) / (a.norm(dim=1) * target.norm(dim=1))).mean()

    expected = distance_of(features_adv)
    if clean:
        expected = expected + distance_of(penultimate_features(student, batch.x))
    torch.testing.assert_close(terms["vfd"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["loss"], cross_entropy(logits_adv, batch.y) + 0.7 * expected, rtol=1e-5, atol=1e-6)
    terms["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in vfd.teacher.parameters())
    assert list(method.trained_networks()) == ["student"]
    method.train()
    assert not any(module.training for module in vfd.teacher.modules())
    for key, value in vfd.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key


def test_vfd_refuses_features_of_another_width() -> None:
    method = build("pgd-at", {"vfd": {}})
    method.regularisers[0].set_teacher(BNNet(width=3))
    with pytest.raises(ConfigError, match=r"penultimate features are \(256,\), the teacher's \(192,\)"):
        method(make_batch())


def test_vfd_logit_layer_and_a_named_layer() -> None:
    batch = make_batch(seed=5)
    logits = build("pgd-at", {"vfd": {"layer": "logits", "clean": False}})
    terms = logits(batch)
    assert terms["vfd"] > 0
    named = build("pgd-at", {"vfd": {"layer": "bn", "clean": False}})
    assert named(batch)["vfd"] > 0
    with pytest.raises(ConfigError, match="vfd.layer 'nope' is not a module"):
        build("pgd-at", {"vfd": {"layer": "nope"}})


# --- AWP (spec 10.1 step 3) -------------------------------------------------------------------------

def host_loss(host: str, network: nn.Module, batch, x_adv: torch.Tensor) -> torch.Tensor:
    if host == "pgd-at":
        return cross_entropy(network(x_adv), batch.y)
    if host == "trades":
        logits_clean, logits_adv = network(batch.x), network(x_adv)  # forwards x, x', x (spec 3.1)
        return cross_entropy(logits_clean, batch.y) + 6.0 * kl_batchmean(network(batch.x), logits_adv)
    raise AssertionError(host)


@pytest.mark.parametrize("host", ["pgd-at", "trades"])
@pytest.mark.parametrize(("gamma", "eta"), [(0.01, 0.01), (0.005, 0.1)])
def test_awp_step_matches_the_spec_and_the_perturbation_is_gone_after_it(host: str, gamma: float, eta: float) -> None:
    method = build(host, {"awp": {"gamma": gamma, "eta": eta}})
    reference = copy.deepcopy(method)
    batch = make_batch(seed=6)
    optimizer = sgd(method.student.parameters())
    optimizer.zero_grad()
    method(batch)["loss"].backward()
    optimizer.step()
    method.after_step()

    student = reference.student
    objective, start = ("kl", "normal") if host == "trades" else ("ce", "uniform")
    x_adv = reference_attack(student, batch, objective, start)  # at the unperturbed weights
    directions = reference_awp_directions(student, lambda net: host_loss(host, net, batch, x_adv), eta)
    with torch.no_grad():
        for name, parameter in student.named_parameters():
            if name in directions:
                parameter += gamma * directions[name]
    reference_sgd = sgd(student.parameters())
    reference_sgd.zero_grad()
    host_loss(host, student, batch, x_adv).backward()
    reference_sgd.step()  # weight decay at the perturbed point, as the official code
    with torch.no_grad():
        for name, parameter in student.named_parameters():
            if name in directions:
                parameter -= gamma * directions[name]
    assert set(directions) == {"conv.weight", "fc.weight"}  # >= 2-D weights only
    for key, value in reference.student.state_dict().items():
        torch.testing.assert_close(method.student.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_awp_waits_for_its_warmup_epochs() -> None:
    plain, warming = build("pgd-at", {}), build("pgd-at", {"awp": {"warmup_epochs": 3}})
    batch = make_batch(seed=7)  # epoch 2
    for method in (plain, warming):
        optimizer = sgd(method.student.parameters())
        method(batch)["loss"].backward()
        optimizer.step()
        method.after_step()
    for key, value in plain.student.state_dict().items():
        assert torch.equal(warming.student.state_dict()[key], value), key


def test_awp_on_a_guided_host_ascends_the_students_loss_only() -> None:
    """LBGAT+AWP: the proxy ascends the student's part of the loss; the teacher is never perturbed and its
    BatchNorm statistics see one forward per step, as without AWP."""
    method = build("lbgat-trades", {"awp": {}})
    plain = build("lbgat-trades", {})
    teacher_before = copy.deepcopy(method.teacher.state_dict())
    method.weight_perturbation.perturb(method, make_batch(seed=8), make_batch(seed=8).x)
    for key, value in method.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    method.after_step()
    plain_terms = plain(make_batch(seed=8))
    optimizer = sgd([p for net in method.trained_networks().values() for p in net.parameters()])
    terms = method(make_batch(seed=8))
    terms["loss"].backward()
    assert method.teacher.conv.weight.grad is not None  # the teacher still learns from MSE and its CE
    optimizer.step()
    method.after_step()
    assert not torch.equal(method.teacher.conv.weight, teacher_before["conv.weight"])
    torch.testing.assert_close(method.teacher.bn.running_mean, plain.teacher.bn.running_mean, rtol=0, atol=1e-7)
    assert set(plain_terms) == set(terms)


# --- ISEAT with AWP (spec 10.1) ---------------------------------------------------------------------

@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_iseat_with_awp_matches_the_spec_step(lam: float) -> None:
    params = {"lam": [lam], "gamma": [0.01], "awp_eta": 0.01}
    method = build("iseat", {}, params)
    reference = copy.deepcopy(method)
    batch = make_batch(seed=9)
    optimizer = sgd(method.student.parameters())
    terms = method(batch)
    terms["loss"].backward()
    grads = {name: p.grad.clone() for name, p in method.student.named_parameters()}
    optimizer.step()
    method.after_step()

    expected, unperturbed = reference_iseat(reference.student, batch, params)
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value, rtol=1e-5, atol=1e-6, msg=name)
    expected["loss"].backward()
    if unperturbed is not None:  # the clean logits' gradient joins the model's (official tmp_model)
        for parameter, extra in zip(reference.student.parameters(), unperturbed.parameters(), strict=True):
            parameter.grad += extra.grad
    for name, parameter in reference.student.named_parameters():
        torch.testing.assert_close(grads[name], parameter.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert not method.weights.applied


# --- composition rules ------------------------------------------------------------------------------

@pytest.mark.parametrize(("settings", "overrides", "message"), [
    ({"method.name": "natural", "method.plugins": ["awp"]}, [], "natural has no training attack"),
    ({"method.name": "iseat", "method.plugins": ["rpat"]}, [], "iseat has its own regulariser"),
    ({"method.name": "trades", "method.plugins": ["rpat", "rpat"]}, [], "listed twice"),
    ({"method.name": "trades", "method.plugins": ["nope"]}, [], "unknown plug-in 'nope'"),
    ({"method.name": "trades"}, ["method.awp.gamma=0.1"], "awp is not in method.plugins"),
    ({"method.name": "trades", "method.plugins": ["rpat"]}, ["method.rpat.r=0"], "rpat.r must be in"),
    ({"method.name": "trades", "method.plugins": ["vfd"]}, [], "set --set method.vfd.checkpoint"),
    ({"method.name": "trades", "method.plugins": ["vfd"], "compile": True}, ["method.vfd.checkpoint=a.pt"],
     "a compiled student does not run"),
    ({"method.name": "trades", "method.plugins": ["vfd"]}, ["method.vfd.checkpoint=a.pt", "method.vfd.distance=l1"],
     "vfd.distance must be one of"),
])
def test_combinations_that_make_no_sense_are_refused_before_any_work(settings: dict, overrides: list[str],
                                                                    message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(build_config(None, settings, overrides))


def test_plugins_read_from_a_recipe_and_written_back() -> None:
    recipe = {"method": {"name": "trades", "alpha": 3, "plugins": ["rpat", "awp"], "rpat": {"lam": 2},
                         "awp": {"gamma": 0.005}}}
    config = build_config(recipe, {}, ["method.awp.eta=0.1"])
    assert config.method.plugins == ["rpat", "awp"] and config.method.params == {"alpha": 3}
    assert config.method.plugin_params == {"rpat": {"lam": 2}, "awp": {"gamma": 0.005, "eta": 0.1}}
    import yaml

    again = build_config(yaml.safe_load(config_to_yaml(config)))
    assert again.method == config.method


def test_a_config_without_plugins_is_written_as_before() -> None:
    assert "plugins" not in config_to_yaml(build_config({"method": "trades"}))


def test_a_run_from_before_a_new_method_setting_resumes_while_it_holds_its_default() -> None:
    """trades gained adversarial_first (and every config plugins/plugin_params) later: a run saved
    before still resumes, unless the new setting is changed from its default."""
    from lbgat.structured import to_mapping
    from lbgat.train.resume import differences

    before = to_mapping(build_config({"method": {"name": "trades", "alpha": 6.0}}))
    before["method"]["params"] = {"alpha": 6.0}
    del before["method"]["plugins"], before["method"]["plugin_params"]
    now = to_mapping(build_config({"method": {"name": "trades", "alpha": 6.0, "adversarial_first": False}}))
    assert differences(before, now) == []
    changed = to_mapping(build_config({"method": {"name": "trades", "alpha": 6.0, "adversarial_first": True}}))
    assert differences(before, changed) == ["method.params.adversarial_first (None in the run, True now)"]
    plugged = to_mapping(build_config({"method": {"name": "trades", "alpha": 6.0, "plugins": ["rpat"]}}))
    assert differences(before, plugged) == ["method.plugins (None in the run, ['rpat'] now)"]


@pytest.mark.parametrize(("settings", "overrides", "message"), [
    ({"method.name": "trades"}, ["method.alpha=-1"], r"method.alpha must be a finite number >= 0, got -1.0"),
    ({"method.name": "lbgat-trades"}, ["method.student_ce=-0.5"], r"method.student_ce must be a finite number"),
    ({"method.name": "mart"}, ["method.beta=-6"], r"method.beta must be a finite number >= 0"),
    ({"method.name": "iseat"}, ["method.gamma=[0.01, -1]"], r"method.gamma must be a finite number >= 0, got -1"),
    ({"method.name": "trades", "method.plugins": ["awp"]}, ["method.awp.eta=-0.1"], r"method.awp.eta must be"),
    ({"method.name": "trades", "method.plugins": ["rpat"]}, ["method.rpat.lam=-1"], r"method.rpat.lam must be"),
])
def test_a_method_or_plugin_number_below_zero_is_one_line(settings: dict, overrides: list[str], message: str) -> None:
    """Every hyperparameter of a method or plug-in is a weight, rate or size: finite and >= 0 (the review
    found `method.alpha=-1` accepted)."""
    with pytest.raises(ConfigError, match=message):
        validate(build_config(None, settings, overrides))
