"""LBGAT+TRADES (and every guided method with a regulariser) at alpha = 0 runs the
student's clean forward without a graph, and the step stays bit-identical to the graph-building path
(the official computation)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lbgat.data.loader import Batch
from lbgat.methods import TrainAttack, create_method
from lbgat.methods.base import LossTerms, add_weighted
from lbgat.models import create_model


def _batch(seed: int) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (6,), generator=generator)
    return Batch(x, y, torch.arange(6), epoch=0, seed=seed)


def _method(params: dict, name: str = "lbgat-trades") -> nn.Module:
    torch.manual_seed(0)
    student = create_model("wrn-10-1", num_classes=10)
    teacher = create_model("wrn-10-1", num_classes=10)
    attack = TrainAttack(eps=0.031, step_size=0.007, steps=2, start="normal")
    return create_method(name, student, teacher=teacher, params={"alpha": 0.0, **params}, attack=attack)


def graph_building_step(method, batch: Batch) -> LossTerms:
    """The official order of forwards, the clean one with its graph whatever alpha is."""
    x_adv = method.adversarial(batch)
    logits_adv = method.student(x_adv)
    logits_clean = method.student(batch.x)
    terms = method.guided(batch, logits_adv)
    regulariser = method.regulariser
    return add_weighted(terms, regulariser.name, regulariser.term(logits_clean, logits_adv), method.params.alpha)


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The IEEE bit patterns: unlike torch.equal, tells -0.0 from 0.0 and compares NaNs."""
    return tensor.detach().contiguous().view(torch.int32) if tensor.dtype == torch.float32 else tensor


def _assert_bit_identical(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    assert torch.equal(_bits(ours), _bits(theirs)), what


@pytest.mark.parametrize(("name", "params"), [("lbgat-trades", {}),
                                             ("lbgat-trades", {"guidance": "kl", "student_ce": 0.5}),
                                             ("lbgat-trades", {"separate_bn": True}), ("lbgat-alp", {})],
                         ids=["paper", "kl-guidance-student-ce", "separate-bn", "lbgat-alp"])
def test_alpha_zero_step_is_bit_identical_to_the_graph_building_path(name: str, params: dict) -> None:
    ours = _method(params, name)
    reference = copy.deepcopy(ours)
    optimisers = [torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
                  for method in (ours, reference)]
    for step in range(2):  # the second step also compares the momentum buffers' effect
        batch = _batch(step)
        ours.train()
        reference.train()
        terms = ours(batch)
        expected = graph_building_step(reference, batch)
        assert list(terms) == list(expected)
        for name, value in expected.items():
            _assert_bit_identical(terms[name], value, f"step {step}: {name}")
        for optimiser in optimisers:
            optimiser.zero_grad(set_to_none=True)
        terms["loss"].backward()
        expected["loss"].backward()
        for (name, mine), theirs in zip(ours.named_parameters(), reference.parameters(), strict=True):
            assert (mine.grad is None) == (theirs.grad is None), name
            if mine.grad is not None:
                _assert_bit_identical(mine.grad, theirs.grad, f"step {step}: grad of {name}")
        for (name, mine), theirs in zip(ours.named_buffers(), reference.buffers(), strict=True):
            _assert_bit_identical(mine, theirs, f"step {step}: {name}")
        for optimiser in optimisers:
            optimiser.step()
        for (name, mine), theirs in zip(ours.named_parameters(), reference.parameters(), strict=True):
            _assert_bit_identical(mine, theirs, f"after step {step}: {name}")


def test_alpha_zero_clean_forward_has_no_graph_but_updates_batchnorm() -> None:
    method = _method({})
    outputs: list[torch.Tensor] = []
    method.student.register_forward_hook(lambda module, args, out: outputs.append(out))
    bn = method.student.bn1
    method.train()
    method(_batch(0))
    # The attack's forwards (eval mode) come first; then the student's x' and x forwards, in train mode.
    assert [out.requires_grad for out in outputs[-2:]] == [True, False]
    assert bn.num_batches_tracked.item() == 2  # both train-mode forwards updated the running statistics


def test_alpha_six_keeps_the_clean_forward_in_the_graph() -> None:
    method = _method({"alpha": 6.0})
    outputs: list[torch.Tensor] = []
    method.student.register_forward_hook(lambda module, args, out: outputs.append(out))
    method.train()
    method(_batch(0))
    assert [out.requires_grad for out in outputs[-2:]] == [True, True]
