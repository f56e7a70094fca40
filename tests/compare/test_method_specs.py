"""What `lbgat compare --methods` can say.

Item 11: several plug-ins could not be written (`trades:plugins=[rpat,awp]` was split at its comma into
"unknown method 'awp]'"); now commas inside brackets belong to the value, and `trades+rpat+awp` (the name
the report gives such a run) means the same. Item 12: `trades:alpha=6:alpha=1` trained alpha 1 without a
word; a key given twice is refused.
"""

from __future__ import annotations

import re

import pytest

from lbgat.cli import build_parser, main
from lbgat.compare import parse_methods
from lbgat.compare.engine import ComparePlan, _config
from lbgat.errors import ConfigError
from lbgat.train.setup import validate


def described(text: str) -> list[tuple[str, list[str], str]]:
    return [(entry.method, entry.overrides, entry.run_folder) for entry in parse_methods(text)]


def test_a_list_of_plugins_is_one_value_of_one_method() -> None:
    assert described("trades:plugins=[rpat,awp]") == [
        ("trades", ["method.plugins=[rpat,awp]"], "trades-pluginsrpat-awp")]
    assert described("natural, trades:plugins=[rpat,awp]:rpat.lam=2 ,pgd-at") == [
        ("natural", [], "natural"),
        ("trades", ["method.plugins=[rpat,awp]", "method.rpat.lam=2"], "trades-pluginsrpat-awp-rpat.lam2"),
        ("pgd-at", [], "pgd-at"),
    ]


def test_name_plus_plugins_is_the_same_run() -> None:
    assert parse_methods("trades+rpat+awp") == parse_methods("trades:plugins=[rpat,awp]")
    assert described("pgd-at+awp:alpha=1,trades+rpat+awp:rpat.lam=2") == [
        ("pgd-at", ["method.plugins=[awp]", "method.alpha=1"], "pgd-at-pluginsawp-alpha1"),
        ("trades", ["method.plugins=[rpat,awp]", "method.rpat.lam=2"], "trades-pluginsrpat-awp-rpat.lam2"),
    ]
    with pytest.raises(ConfigError, match="lists trades-pluginsrpat-awp twice"):
        parse_methods("trades+rpat+awp,trades:plugins=[rpat,awp]")


def test_the_plugins_reach_the_training_settings(tmp_path) -> None:
    """What each spelling trains: the method with both plug-ins, each with its own settings."""
    for text in ("pgd-at:plugins=[rpat,awp]:rpat.lam=2", "pgd-at+rpat+awp:rpat.lam=2"):
        entry = parse_methods(text)[0]
        config = _config(ComparePlan(entries=(entry,), out=tmp_path, flags={"model": "tiny-cnn"}), entry)
        validate(config)
        assert config.method.name == "pgd-at" and config.method.plugins == ["rpat", "awp"]
        assert config.method.plugin_params == {"rpat": {"lam": 2}}


@pytest.mark.parametrize(("text", "message"), [
    ("trades:alpha=6:alpha=1", "--methods: 'trades:alpha=6:alpha=1' sets alpha twice; give each setting once"),
    ("natural,lbgat-trades:beta=2:alpha=0:beta=3", "sets beta twice"),
    ("trades:plugins=[rpat]:rpat.lam=2:rpat.lam=3", "sets rpat.lam twice"),
    ("trades+awp:plugins=[rpat]", "sets plugins twice (once as NAME+PLUGIN)"),
    ("trades:plugins=[rpat,awp", "has an unmatched bracket"),
    ("trades:plugins=rpat],natural", "has an unmatched bracket"),
    ("trades+nope", "unknown plug-in 'nope'"),
    ("trades+rpat+rpat", "names the plug-in rpat twice"),
    ("nope+rpat", "unknown method 'nope'"),
])
def test_malformed_or_repeated_settings_are_one_line(capsys, tmp_path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_methods(text)
    assert main(["compare", "--methods", text, "--out", str(tmp_path / "cmp"), "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "cmp").exists()


def test_help_shows_how_to_write_several_plugins() -> None:
    compare = build_parser()._subparsers._group_actions[0].choices["compare"]  # type: ignore[union-attr]
    text = " ".join(compare.format_help().split())
    assert "trades+rpat+awp" in text and "NAME:plugins=[rpat,awp]" in text and "each key once" in text
