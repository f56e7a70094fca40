"""What rebuilds a network: its architecture, classes, input shape and input normalisation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """Enough to rebuild an architecture: registry name, classes and input shape, normalisation."""

    arch: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: list[float] | None = None
    std: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(**data)

    def build(self) -> nn.Module:
        from ..models import create_model

        return create_model(self.arch, num_classes=self.num_classes, in_channels=self.in_channels,
                            image_size=self.image_size, mean=self.mean, std=self.std)
