"""Every float flag of every command refuses NaN and infinities as it is read, in one line
(`lbgat eval ... --cw-kappa nan` was accepted and reported CW above clean accuracy).

The flags are found by walking the real parsers, so a float flag added later without ``finite_float`` fails
``test_no_flag_reads_a_plain_float``, and one added with it is checked by the parametrised refusal below.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from lbgat.cli import build_parser, main
from lbgat.settings import finite_float

# The least each command needs to be parsed; a new command with a float flag must be added here.
REQUIRED = {
    "train": [],
    "eval": ["last.pt"],
    "compare": ["--methods", "natural", "--out", "cmp"],
    "report": ["run", "--out", "rep"],
    "export": ["last.pt", "--out", "exp"],
    "demo": [],
}


def actions(parser: argparse.ArgumentParser, command: tuple[str, ...] = ()) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from actions(sub, (*command, name))
        else:
            yield " ".join(command), action


FLOAT_FLAGS = sorted((command, action.option_strings[0]) for command, action in actions(build_parser())
                     if action.type is finite_float)


def test_no_flag_reads_a_plain_float() -> None:
    plain = [(command, action.option_strings) for command, action in actions(build_parser()) if action.type is float]
    assert plain == []
    assert {("eval", "--eps"), ("eval", "--step-size"), ("eval", "--cw-kappa"), ("compare", "--eps"),
            ("compare", "--step-size"), ("compare", "--tsne-perplexity"),
            ("report", "--tsne-perplexity")} <= set(FLOAT_FLAGS)


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "+Infinity", "1e400"])
@pytest.mark.parametrize(("command", "flag"), FLOAT_FLAGS)
def test_every_float_flag_refuses_non_finite_values(capsys, command: str, flag: str, value: str) -> None:
    with pytest.raises(SystemExit) as stopped:
        main([command, *REQUIRED[command], f"{flag}={value}"])
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"argument {flag}: must be a finite number, got {value!r}" in lines[0]


def test_the_issues_cw_kappa_nan_is_one_line(capsys, tmp_path) -> None:
    """`lbgat eval CKPT --attacks clean,cw5 --cw-kappa nan`: refused before the checkpoint is even read."""
    with pytest.raises(SystemExit) as stopped:
        main(["eval", str(tmp_path / "last.pt"), "--attacks", "clean,cw5", "--cw-kappa", "nan"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "lbgat eval: error: argument --cw-kappa: must be a finite number, got 'nan' (see `lbgat eval --help`)"]


def test_finite_values_still_read_as_before() -> None:
    assert [finite_float(text) for text in ("0.031", "1e-3", "-2.5", "50", "8e0")] == [0.031, 1e-3, -2.5, 50.0, 8.0]
    with pytest.raises(argparse.ArgumentTypeError, match="'eight' is not a number"):
        finite_float("eight")
    assert build_parser().parse_args(["eval", "x.pt", "--cw-kappa", "0"]).cw_kappa == 0.0


def test_a_newline_in_a_name_keeps_the_error_on_one_line(tmp_path: Path, capsys) -> None:
    """One line on stderr, whatever the user named their folders (a newline or an escape sequence)."""
    folder = tmp_path / "a\nlbgat eval: error: forged\x1b[31m"
    assert main(["eval", str(folder / "last.pt")]) != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "\x1b" not in lines[0] and "a\\nlbgat eval" in lines[0], lines
