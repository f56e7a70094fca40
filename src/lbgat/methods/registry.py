"""Methods by name."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Method

_METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    if cls.name in _METHODS:
        raise ValueError(f"method {cls.name!r} registered twice")
    _METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    try:
        return _METHODS[name]
    except KeyError:
        known = ", ".join(sorted(_METHODS))
        raise ConfigError(f"unknown method {name!r}; known: {known}") from None


def list_methods() -> list[type[Method]]:
    return [_METHODS[name] for name in sorted(_METHODS)]

