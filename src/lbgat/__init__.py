"""lbgat: Learnable Boundary Guided Adversarial Training and the accuracy-robustness trade-off family."""

from __future__ import annotations

from .checkpoints.loading import load_model
from .version import __version__

__all__ = ["__version__", "load_model"]
