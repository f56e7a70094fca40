"""Architectures by name: ``@register_model`` factories, families of sizes, and ``create_model``.

A factory takes ``(num_classes, in_channels, image_size)`` and returns a module whose
forward maps a ``(B, in_channels, image_size, image_size)`` batch in [0, 1] to
``(B, num_classes)`` logits, applying ``model.normalize`` first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from .normalize import InputNormalization

ModelFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture."""

    name: str
    description: str
    factory: ModelFactory
    # (C, H, W) the architecture requires, or None if any size works.
    input_shape: tuple[int, int, int] | None


@dataclass(frozen=True)
class ModelFamily:
    """Architectures named by a pattern with sizes in it (``wrn-D-W``), built for any valid sizes."""

    pattern: str
    description: str
    # The entry for a name of this family, None for a name not of it; raises ConfigError (the
    # reason, one line) for a name of the family with invalid sizes.
    resolve: Callable[[str], ModelEntry | None]

    def member(self, name: str) -> bool:
        """Whether ``name`` is a valid name of this family."""
        try:
            return self.resolve(name) is not None
        except ConfigError:
            return False


_REGISTRY: dict[str, ModelEntry] = {}
_FAMILIES: list[ModelFamily] = []


def register_model(
    name: str, *, description: str, input_shape: tuple[int, int, int] | None = None
) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering ``factory(num_classes, in_channels, image_size) -> nn.Module`` under ``name``.

    Declare ``input_shape`` when the architecture takes one size only; a factory that takes a
    range of sizes raises :class:`ConfigError` itself for sizes outside it, at construction.
    """

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelEntry(name, description, factory, input_shape)
        return factory

    return decorate


def register_model_family(family: ModelFamily) -> None:
    """Make every name ``family.resolve`` accepts buildable; a registered name takes precedence."""
    if any(known.pattern == family.pattern for known in _FAMILIES):
        raise ValueError(f"model family {family.pattern!r} is already registered")
    _FAMILIES.append(family)


def list_models() -> list[ModelEntry]:
    """All registered architectures, sorted by name (a family's named sizes among them)."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def list_model_families() -> list[ModelFamily]:
    """The registered families, sorted by pattern."""
    return sorted(_FAMILIES, key=lambda family: family.pattern)


def get_model_entry(name: str) -> ModelEntry:
    """The registered architecture ``name``, else the family member it names."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    known = ", ".join([*sorted(_REGISTRY), *(family.pattern for family in list_model_families())])
    for family in list_model_families():
        try:
            entry = family.resolve(name)
        except ConfigError as error:
            raise ConfigError(f"unknown model {name!r}: {error}; known: {known}") from None
        if entry is not None:
            return entry
    raise ConfigError(f"unknown model {name!r}; known: {known}")


def default_teacher(in_channels: int, image_size: int) -> str:
    """The teacher used when none is given: the official LBGAT one where it fits."""
    if (in_channels, image_size, image_size) == (3, 32, 32):
        return "resnet18-lbgat"
    if in_channels == 1:
        # small-cnn's two unpadded conv pairs need at least 16×16 inputs.
        return "small-cnn" if image_size >= 16 else "tiny-cnn"
    return "resnet18"


def _shape_text(in_channels: int, image_size: int) -> str:
    return f"{in_channels}×{image_size}×{image_size}"


def create_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    """Build ``name`` for ``in_channels × image_size × image_size`` inputs in [0, 1].

    ``mean``/``std`` (one value per channel) turn on normalisation inside the model, as
    ``model.normalize``. Raises :class:`ConfigError` for an unknown name or an input the
    architecture cannot take.
    """
    entry = get_model_entry(name)
    sizes = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    for label, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{label} must be a positive integer, got {value!r}")
    suggestion = default_teacher(in_channels, image_size)
    hint = f"; pick another model, e.g. {suggestion}" if suggestion != name else ""
    if entry.input_shape is not None and entry.input_shape != (in_channels, image_size, image_size):
        needed = "×".join(str(v) for v in entry.input_shape)
        raise ConfigError(f"{name} needs {needed} inputs, got {_shape_text(in_channels, image_size)}{hint}")
    normalize = InputNormalization(mean, std)
    if normalize.num_channels not in (None, in_channels):
        raise ConfigError(
            f"normalisation has {normalize.num_channels} channel values "
            f"but the inputs have {in_channels} channels"
        )

    model = entry.factory(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    if not isinstance(getattr(model, "normalize", None), InputNormalization):
        raise TypeError(f"model {name!r} has no InputNormalization 'normalize' to apply first in forward")
    model.normalize = normalize
    return model
