"""lbgat: Learnable Boundary Guided Adversarial Training and the accuracy-robustness trade-off family."""

from __future__ import annotations

__version__ = "0.1.0"

from .checkpoint import load_model  # noqa: E402

__all__ = ["__version__", "load_model"]
