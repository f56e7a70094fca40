"""A training setting declared once, at its dataclass field (issue 14 item 2).

``setting(default, help=..., flag="--max-steps", minimum=1, resumable=True)`` is a dataclass field whose
metadata says everything else about the setting: its command-line flag (if any) and help text, its
choices, its range, whether a resumed run may change it, and how an "auto" value is resolved. The flags of
``lbgat train``, the flag-to-key map, the range checks of validation, the resume rules and the resolution
of "auto" values are read from these declarations, so adding a setting touches one place.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

METADATA_KEY = "lbgat.setting"


@dataclass(frozen=True)
class Setting:
    """What a field's declaration says beyond its type and default."""

    help: str | None = None  # the flag's help text
    flag: str | None = None  # e.g. "--max-steps"; None: set it with --set or a recipe only
    # Flags that each set one value of a choice, {flag: (value, help)}, at most one of them given:
    # e.g. {"--ieee-fp32": ("ieee", ...), "--tf32": ("tf32", ...)} for the float32 setting.
    switches: dict[str, tuple[str, str]] | None = None
    dest: str | None = None  # argparse's name for the flag's value (default: from the flag)
    metavar: str | None = None
    flag_type: Callable[[str], Any] | None = None  # argparse type= (default: from the annotation)
    choices: tuple[str, ...] | None = None  # argparse choices= and validation
    minimum: float | None = None  # value >= minimum
    above: float | None = None  # value > above
    maximum: float | None = None  # value <= maximum
    below: float | None = None  # value < below
    message: str | None = None  # the refusal, with {key} and {value}; default: from the range
    resumable: bool = False  # a resumed run may change it (it does not alter what is computed)
    # The value of a setting left at None or "auto": auto(facts, resolved), with the run's facts (data, method)
    # and the config whose settings declared before this one are already resolved (resolve_auto).
    auto: Callable[[Any, Any], Any] | None = None


def setting(default: Any = MISSING, *, default_factory: Any = MISSING, **declaration: Any) -> Any:
    """A dataclass field declaring a setting: its default, and the rest as :class:`Setting` says."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={METADATA_KEY: Setting(**declaration)})


@dataclass(frozen=True)
class Declared:
    key: str  # dotted, e.g. "schedule.epochs"
    annotation: Any  # the field's type, e.g. int | None
    setting: Setting


def declared_settings(config_cls: type) -> Iterator[Declared]:
    """Every declared setting of a config class and its nested sections, in declaration order."""
    yield from _walk(config_cls, "")


def _walk(cls: type, prefix: str) -> Iterator[Declared]:
    hints = typing.get_type_hints(cls)
    for entry in dataclasses.fields(cls):
        annotation = hints[entry.name]
        if dataclasses.is_dataclass(annotation):
            yield from _walk(annotation, f"{prefix}{entry.name}.")
        else:
            declared = entry.metadata.get(METADATA_KEY, Setting())
            yield Declared(f"{prefix}{entry.name}", annotation, declared)


def resumable_keys(config_cls: type) -> frozenset[str]:
    return frozenset(item.key for item in declared_settings(config_cls) if item.setting.resumable)


def _without_none(annotation: Any) -> Any:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        rest = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


def _dest(item: Declared) -> str:
    if item.setting.flag is None:  # switches only: named for the setting
        return item.setting.dest or item.key.replace(".", "_")
    return item.setting.dest or item.setting.flag.lstrip("-").replace("-", "_")


def add_switches(parser: argparse.ArgumentParser, dest: str, switches: dict[str, tuple[str, str]]) -> None:
    """One flag per value of ``switches``, mutually exclusive; ``dest`` stays None when none is given."""
    group = parser.add_mutually_exclusive_group()
    for flag, (value, help_text) in switches.items():
        group.add_argument(flag, dest=dest, action="store_const", const=value, help=help_text)


def finite_float(text: str) -> float:
    """argparse ``type=`` of every float flag: NaN and infinities mean nothing for a radius, a step, a
    margin or a perplexity (and compare false with every bound a later range check would apply), so
    they are refused as the flag is read, as a setting's value is (lbgat.structured)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def add_setting_flags(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One flag per declared setting with a flag: booleans switch on, lists repeat, numbers are typed."""
    for item in declared_settings(config_cls):
        declared = item.setting
        if declared.switches is not None:
            add_switches(parser, _dest(item), declared.switches)
        if declared.flag is None:
            continue
        kind = _without_none(item.annotation)
        options: dict[str, Any] = {"dest": _dest(item)}
        if kind is bool:
            options["action"] = "store_true"
        elif typing.get_origin(kind) is list:
            options["action"] = "append"
        elif declared.flag_type is not None:
            options["type"] = declared.flag_type
        elif kind is float:
            options["type"] = finite_float
        elif kind is int:
            options["type"] = int
        for name in ("metavar", "choices", "help"):
            if getattr(declared, name) is not None:
                options[name] = getattr(declared, name)
        parser.add_argument(declared.flag, **options)


def flag_values(args: argparse.Namespace, config_cls: type) -> dict[str, Any]:
    """The dotted keys the flags set; None where a flag was not given (a switch left off is not given)."""
    values: dict[str, Any] = {}
    for item in declared_settings(config_cls):
        if item.setting.flag is None and item.setting.switches is None:
            continue
        value = getattr(args, _dest(item))
        values[item.key] = (value or None) if _without_none(item.annotation) is bool else value
    return values


def _value_at(config: Any, key: str) -> Any:
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _replaced(config: Any, key: str, value: Any) -> Any:
    """``config`` with the setting at the dotted ``key`` set to ``value`` (its sections copied, not changed)."""
    head, _, rest = key.partition(".")
    if not rest:
        return dataclasses.replace(config, **{head: value})
    return dataclasses.replace(config, **{head: _replaced(getattr(config, head), rest, value)})


def resolve_auto(config: Any, facts: Any) -> Any:
    """``config`` with each setting declared with ``auto`` and left at None or "auto" set to its resolver's value,
    in declaration order (so a resolver may read a setting declared before it, resolved)."""
    for item in declared_settings(type(config)):
        resolver = item.setting.auto
        if resolver is not None and _value_at(config, item.key) in (None, "auto"):
            config = _replaced(config, item.key, resolver(facts, config))
    return config


def check_ranges(config: Any) -> None:
    """Refuse, in one line, the first declared setting outside its choices or range."""
    for item in declared_settings(type(config)):
        value = _value_at(config, item.key)
        problem = _range_problem(item.setting, value)
        if problem is not None:
            message = item.setting.message or problem
            raise ConfigError(message.format(key=item.key, value=value))


def _range_problem(declared: Setting, value: Any) -> str | None:
    """The default refusal for a value outside the declaration, or None when it is inside."""
    if value is None:
        return None  # "auto" or "off"; resolved or ignored later
    if declared.choices is not None and value not in declared.choices:
        return "{key} must be one of " + ", ".join(declared.choices) + ", got {value!r}"
    if declared.minimum is not None and value < declared.minimum:
        return f"{{key}} must be >= {declared.minimum}, got {{value}}"
    if declared.above is not None and value <= declared.above:
        return f"{{key}} must be > {declared.above}, got {{value}}"
    if declared.maximum is not None and value > declared.maximum:
        return f"{{key}} must be <= {declared.maximum}, got {{value}}"
    if declared.below is not None and value >= declared.below:
        return f"{{key}} must be < {declared.below}, got {{value}}"
    return None


def folder_name(value: str) -> str:
    """A folder flag's value: an empty string is a mistake (it would silently mean the current or default folder)."""
    if not value:
        raise argparse.ArgumentTypeError("an empty string is not a folder name")
    return str(Path(value))
