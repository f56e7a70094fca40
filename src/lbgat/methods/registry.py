"""Methods and plug-ins by name."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from ..errors import ConfigError
from .base import Method

T = TypeVar("T", bound=type[Any])


class Registry(Generic[T]):
    """Classes by their ``name``; an unknown name is a one-line error that lists the known ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.classes: dict[str, T] = {}

    def register(self, cls: T) -> T:
        if cls.name in self.classes:
            raise ValueError(f"{self.kind} {cls.name!r} registered twice")
        self.classes[cls.name] = cls
        return cls

    def get(self, name: str) -> T:
        try:
            return self.classes[name]
        except KeyError:
            known = ", ".join(sorted(self.classes))
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def all(self) -> list[T]:
        return [self.classes[name] for name in sorted(self.classes)]


METHODS: Registry[type[Method]] = Registry("method")
register_method = METHODS.register
get_method = METHODS.get
list_methods = METHODS.all
