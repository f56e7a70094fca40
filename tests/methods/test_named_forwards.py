"""A step's forwards: a host names the student forwards it makes, a regulariser declares
the ones it uses, the pair is checked when the method is built, and a step makes no forward nobody declared.
No forward hooks in methods/ but VFD's feature tap."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import lbgat.methods
from helpers.method_formulas import PARAMS, make_batch, make_method
from helpers.plugin_builds import build
from lbgat.errors import ConfigError
from lbgat.methods import create_method, get_method, list_methods, method_params
from lbgat.methods.base import MethodParams
from lbgat.methods.plugin import Regulariser
from lbgat.methods.step import ADV, CLEAN, ForwardNeeds, StepView

HOST_SETTINGS = [(method.name, PARAMS[method.name]) for method in list_methods()
                 if method.attack_objective and method.accepts_plugins]
HOST_SETTINGS += [("alp", {"variant": "original"}), ("trades", {"adversarial_first": True}),
                  ("lbgat-trades", {"alpha": 0.0}), ("bgat-alp", {"alpha": 0.0})]


def batchnorm_updates(method) -> int:
    """How many forwards of the student have updated BatchNorm's running statistics so far."""
    return int(method.student.bn.num_batches_tracked)


@pytest.mark.parametrize(("host", "params"), HOST_SETTINGS)
def test_every_host_names_the_forwards_it_declares_each_with_a_graph(host: str, params: dict) -> None:
    method = make_method(host, params)
    batch = make_batch(seed=1)
    step = method.host_step(batch, method.adversarial(batch))
    assert set(step.forwards.named) == get_method(host).named_forwards(method_params(host, params))
    assert ADV in step.forwards.named
    for name, forward in step.forwards.named.items():
        assert forward.logits.requires_grad and forward.logits.shape == (len(batch), 5), name


def test_alp_original_with_rpat_makes_its_joint_forward_and_rpats_midpoint_only() -> None:
    """The issue's case: RPAT takes f(x) and f(x') as the rows of ALP's joint forward of [x, x'] and adds
    only f(x_mid): two BatchNorm-updating forwards in the step (the attack runs in eval mode), not four."""
    method = build("alp", {"rpat": {"lam": 1.0, "r": 0.5}}, {"variant": "original"})
    batch = make_batch(seed=2)
    before = batchnorm_updates(method)
    logits_seen: list[torch.Tensor] = []
    method.student.register_forward_hook(lambda module, args, output: logits_seen.append(output))
    terms = method(batch)
    assert batchnorm_updates(method) - before == 2
    joint, midpoint = logits_seen[-2:]
    assert joint.shape[0] == 2 * len(batch)
    clean, adv = joint.detach().chunk(2)
    expected = ((midpoint.detach() - (0.5 * clean + 0.5 * adv)) ** 2).mean()
    torch.testing.assert_close(terms["rpat"].detach(), expected, rtol=0, atol=0)


@pytest.mark.parametrize(("host", "params", "forwards"), [("pgd-at", {}, 3), ("trades", {"alpha": 6.0}, 4),
                                                          ("mart", {"beta": 6.0}, 3)])
def test_rpat_adds_its_midpoint_and_only_the_clean_forward_its_host_lacks(host: str, params: dict,
                                                                         forwards: int) -> None:
    """The official forwards: PGD-AT f(x'), f(x_mid), f(x); TRADES f(x), f(x'), f(x), f(x_mid); MART f(x),
    f(x'), f(x_mid)."""
    method = build(host, {"rpat": {}}, params)
    before = batchnorm_updates(method)
    method(make_batch(seed=3))
    assert batchnorm_updates(method) - before == forwards


@dataclass(frozen=True)
class ProbeParams(MethodParams):
    """A regulariser's settings in these tests."""


class CleanProbe(Regulariser):
    """A regulariser that takes f(x) from its host only."""

    name = "clean-probe"
    description = "the mean clean logit"
    paper = "none (a test)"
    Params = ProbeParams

    @classmethod
    def forward_needs(cls, params: MethodParams) -> ForwardNeeds:
        return ForwardNeeds(host=frozenset({CLEAN}))

    def weight(self, epoch: int) -> float:
        return 1.0

    def term(self, step: StepView) -> torch.Tensor:
        return step.logits(CLEAN).mean()


@pytest.mark.parametrize(("host", "params"), [("pgd-at", {}), ("lbgat", {}), ("lbgat-trades", {"alpha": 0.0})])
def test_a_plugin_asking_for_a_forward_the_host_does_not_name_is_refused_at_build_time(host: str,
                                                                                      params: dict) -> None:
    method = make_method(host, params)  # the host alone builds
    with pytest.raises(ConfigError, match=rf"^cannot combine {host} with clean-probe: clean-probe takes the host's "
                                          rf"forward 'clean', which {host} does not make here \(it names: adv\)$"):
        create_method(host, method.student, params=params, attack=method.attack, teacher=method.teacher,
                      plugins=[CleanProbe(ProbeParams())])


def test_the_same_plugin_joins_a_host_that_names_the_forward_and_reuses_it() -> None:
    method = make_method("trades")
    method = create_method("trades", method.student, params=PARAMS["trades"], attack=method.attack,
                           plugins=[CleanProbe(ProbeParams())])
    before = batchnorm_updates(method)
    terms = method(make_batch(seed=4))
    assert batchnorm_updates(method) - before == 3  # TRADES' own f(x), f(x'), f(x): the probe adds none
    assert list(terms)[-1] == "clean-probe"


def test_no_forward_hooks_in_methods_but_vfds_feature_tap() -> None:
    """The step hands forwards out by name; only VFD reads an inner layer (the models give no features)."""
    folder = Path(lbgat.methods.__file__).parent
    hooked = sorted(path.name for path in folder.glob("*.py")
                    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                    if isinstance(node, ast.Attribute) and node.attr.startswith("register_forward"))
    assert hooked == ["vfd.py", "vfd.py"]
