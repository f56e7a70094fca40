"""Per-channel input normalisation that lives inside the model.

Inputs are always in [0, 1] and attacks work in that pixel space, so any mean/std
normalisation belongs to the model, applied first in its forward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError


class InputNormalization(nn.Module):
    """``(x - mean) / std`` per channel; the identity (and skipped) when mean/std are None.

    ``mean`` and ``std`` are exposed as tuples of floats (or None) so a checkpoint can
    record them. The tensors are non-persistent buffers: they follow ``.to(device)`` but
    add no ``state_dict`` keys, which keeps keys identical to the official checkpoints.
    """

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        if (mean is None) != (std is None):
            raise ConfigError("input normalisation needs both mean and std, or neither")
        self.mean: tuple[float, ...] | None = None
        self.std: tuple[float, ...] | None = None
        mean_tensor: torch.Tensor | None = None
        std_tensor: torch.Tensor | None = None
        if mean is not None and std is not None:
            self.mean = tuple(float(v) for v in mean)
            self.std = tuple(float(v) for v in std)
            if not self.mean or len(self.mean) != len(self.std):
                raise ConfigError(
                    "normalisation mean and std need one value per channel, "
                    f"got {len(self.mean)} and {len(self.std)}"
                )
            if not all(math.isfinite(v) for v in self.mean) or not all(
                math.isfinite(v) and v > 0 for v in self.std
            ):
                raise ConfigError(
                    f"normalisation needs finite means and positive stds, got mean={self.mean} std={self.std}"
                )
            mean_tensor = torch.tensor(self.mean).view(1, -1, 1, 1)
            std_tensor = torch.tensor(self.std).view(1, -1, 1, 1)
        self.register_buffer("mean_tensor", mean_tensor, persistent=False)
        self.register_buffer("std_tensor", std_tensor, persistent=False)

    @property
    def enabled(self) -> bool:
        return self.mean is not None

    @property
    def num_channels(self) -> int | None:
        return None if self.mean is None else len(self.mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean_tensor is None or self.std_tensor is None:
            return x
        return (x - self.mean_tensor) / self.std_tensor

    def extra_repr(self) -> str:
        return "identity" if self.mean is None else f"mean={self.mean}, std={self.std}"
