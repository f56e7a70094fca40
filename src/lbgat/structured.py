"""Building typed dataclasses from plain mappings (YAML, ``--set``), with one-line errors.

Small on purpose: the settings are ints, floats, bools, strings, optional values, lists of
numbers and nested dataclasses. Ints are accepted where floats are expected, never the reverse,
and bools are never numbers.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class NotFiniteError(ConfigError):
    """A float setting given as infinity or NaN: no setting means anything at those values."""


def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "null"
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation)
        return f"list of {_type_name(item)}"
    if origin is typing.Literal:
        return " | ".join(repr(arg) for arg in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation))


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """``value`` checked against ``annotation``; raises ConfigError naming ``where`` if it does not fit."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return coerce(value, option, where)
            except NotFiniteError:
                raise
            except ConfigError:
                continue
    elif origin is typing.Literal:
        if value in typing.get_args(annotation):
            return value
    elif origin is list:
        (item,) = typing.get_args(annotation)
        if isinstance(value, list | tuple):
            return [coerce(element, item, f"{where}[{i}]") for i, element in enumerate(value)]
    elif origin is dict:
        if isinstance(value, Mapping):
            return dict(value)
    elif annotation is type(None):
        if value is None:
            return None
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond any float
                number = math.inf
            if not math.isfinite(number):
                raise NotFiniteError(f"setting '{where}' must be a finite number, got {value!r}")
            return number
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if isinstance(value, Mapping):
            return from_mapping(annotation, value, where)
    raise ConfigError(f"setting '{where}' must be {_type_name(annotation)}, got {value!r}")


def from_mapping(cls: type[T], mapping: Mapping[str, Any], where: str = "") -> T:
    """An instance of dataclass ``cls`` from ``mapping``; unknown keys and bad types are errors."""
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"setting '{where or cls.__name__}' must be a mapping, got {mapping!r}")
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
    unknown = sorted(set(mapping) - set(fields), key=str)  # a recipe may use numbers as names
    if unknown:
        prefix = f"{where}." if where else ""
        known = ", ".join(prefix + name for name in fields) or "none"
        raise ConfigError(f"unknown setting '{prefix}{unknown[0]}'; known here: {known}")
    values = {}
    for name, value in mapping.items():
        values[name] = coerce(value, hints[name], f"{where}.{name}" if where else name)
    return cls(**values)


def to_mapping(instance: Any) -> dict[str, Any]:
    """A plain, YAML-ready dict of a dataclass instance (recursively)."""
    return dataclasses.asdict(instance)


def field_annotation(cls: type, dotted: str) -> Any:
    """The annotation of a dotted field path such as ``"schedule.epochs"``; ConfigError if unknown."""
    current: Any = cls
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"unknown setting '{dotted}'")
        hints = typing.get_type_hints(current)
        if part not in hints:
            prefix = ".".join(parts[:depth])
            known = ", ".join((f"{prefix}.{name}" if prefix else name) for name in hints)
            raise ConfigError(f"unknown setting '{dotted}'; known here: {known}")
        current = hints[part]
        if typing.get_origin(current) in (typing.Union, types.UnionType):
            options = [arg for arg in typing.get_args(current) if dataclasses.is_dataclass(arg)]
            current = options[0] if options else current
    return current
