"""Each set of allowed values is written once: the flags, the validation and the
messages that list the values all read the one constant."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import get_args

import pytest

from lbgat.attacks import BN_MODES, ITERATES, NORMS, OBJECTIVES, STARTS, BNMode, Iterate, Norm, Objective, Start
from lbgat.checkpoints.averaged_weights import WEIGHTS
from lbgat.cli import build_parser
from lbgat.config import AVERAGE_KINDS, ON_NAN_ACTIONS, SGD_KERNELS, build_config
from lbgat.data.download import DOWNLOADABLE
from lbgat.errors import ConfigError
from lbgat.evaluate.autoattack import AA_VERSIONS, AASettings
from lbgat.evaluate.runner import PROTOCOLS, EvalRequest, check_request, requested_attacks
from lbgat.evaluate.specs import ATTACK_FORMS, ATTACK_NAMES, DEFAULT_ATTACKS, STEPLESS, parse_attacks
from lbgat.runtime.compilation import COMPILE_MODES
from lbgat.runtime.precision import DTYPES, PRECISIONS
from lbgat.train.setup import validate


def _subcommand(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
        parser = commands.choices[name]
    return parser


def _choices(parser: argparse.ArgumentParser, dest: str) -> object:
    return next(action.choices for action in parser._actions if action.dest == dest)


def test_every_choice_flag_holds_its_constant() -> None:
    """Argparse's choices are the constants themselves, not copies of their values."""
    parser = build_parser()
    train, evaluate = _subcommand(parser, "train"), _subcommand(parser, "eval")
    assert _choices(train, "on_nan") is ON_NAN_ACTIONS
    assert _choices(train, "precision") is PRECISIONS
    assert _choices(train, "compile_mode") is COMPILE_MODES
    assert _choices(train, "sgd_kernel") is SGD_KERNELS
    assert _choices(evaluate, "precision") is PRECISIONS
    assert _choices(evaluate, "norm") is NORMS
    assert _choices(evaluate, "aa_version") is AA_VERSIONS
    assert list(_choices(evaluate, "protocol")) == list(PROTOCOLS)
    assert _choices(_subcommand(parser, "data", "download"), "name") is DOWNLOADABLE
    assert _choices(train, "average") is AVERAGE_KINDS
    assert _choices(evaluate, "weights") is WEIGHTS and _choices(_subcommand(parser, "export"), "weights") is WEIGHTS


def test_the_typed_names_and_their_tuples_agree() -> None:
    """Each attack setting's Literal type and its tuple of values are one spelling."""
    assert (STARTS, NORMS, BN_MODES, OBJECTIVES, ITERATES) == tuple(
        map(get_args, (Start, Norm, BNMode, Objective, Iterate)))
    assert PRECISIONS == ("fp32", *DTYPES)


@pytest.mark.parametrize(("setting", "constant"), [("on_nan", ON_NAN_ACTIONS), ("precision", PRECISIONS),
                                                   ("attack.start", STARTS), ("attack.bn_mode", BN_MODES),
                                                   ("attack.objective", OBJECTIVES), ("attack.iterate", ITERATES),
                                                   ("average.kind", AVERAGE_KINDS), ("compile_mode", COMPILE_MODES),
                                                   ("optim.kernel", SGD_KERNELS)])
def test_training_validation_accepts_exactly_the_constant(setting: str, constant: tuple[str, ...]) -> None:
    """Every value of the constant passes validation; any other is refused, naming the values."""
    for value in constant:
        validate(build_config(None, None, [f"{setting}={value}"]))
    with pytest.raises(ConfigError, match=f"^{setting} must be ") as error:
        validate(build_config(None, None, [f"{setting}=bogus"]))
    assert all(value in str(error.value) for value in constant)


def test_evaluation_messages_list_the_constants() -> None:
    """The eval checks refuse with the values of the constants (messages unchanged)."""
    with pytest.raises(ConfigError, match="^--norm must be Linf or L2, got 'L1'$"):
        check_request(EvalRequest(checkpoint=Path("unused.pt"), norm="L1"))
    with pytest.raises(ConfigError, match="^AutoAttack norm must be Linf or L2, got 'L1'$"):
        AASettings(eps=0.031, norm="L1").check()
    with pytest.raises(ConfigError, match=f"^--precision must be one of {', '.join(PRECISIONS)}, got 'fp8'$"):
        check_request(EvalRequest(checkpoint=Path("unused.pt"), precision="fp8"))


def test_the_attack_list_is_chosen_in_one_place() -> None:
    """--attacks, else the protocol's list, else DEFAULT_ATTACKS (once, for checks and plan)."""
    assert requested_attacks(EvalRequest(checkpoint=Path("unused.pt"))) == DEFAULT_ATTACKS
    for name, preset in PROTOCOLS.items():
        assert requested_attacks(EvalRequest(checkpoint=Path("unused.pt"), protocol=name)) == preset["attacks"]
    assert requested_attacks(EvalRequest(checkpoint=Path("unused.pt"), protocol="lbgat", attacks="fgsm")) == "fgsm"


def test_attack_names_come_from_one_table() -> None:
    """The parser, its messages and `lbgat eval --help` list the names of ATTACK_NAMES."""
    for name, kind in ATTACK_NAMES.items():
        text = name if name in STEPLESS else f"{name}7"
        (spec,) = parse_attacks(text, eps=0.1, step_size=0.01, default_steps=20)
        assert spec.kind == kind
        if name not in STEPLESS:
            assert spec.steps == 7
    assert ATTACK_FORMS == "clean, fgsm, pgd<K>, cw<K>, aa, transfer-pgd<K>"
    with pytest.raises(ConfigError, match=f"unknown attack 'square'; use {ATTACK_FORMS}"):
        parse_attacks("square", eps=0.1, step_size=0.01, default_steps=20)
    with pytest.raises(ConfigError, match=f"e.g. --attacks {DEFAULT_ATTACKS}$"):
        parse_attacks(" , ", eps=0.1, step_size=0.01, default_steps=20)
    attacks_help = next(action.help for action in _subcommand(build_parser(), "eval")._actions
                        if action.dest == "attacks")
    assert ATTACK_FORMS in attacks_help and DEFAULT_ATTACKS in attacks_help
