"""Training: config to run directory (checkpoints, metrics, provenance)."""

from .schedule import lr_at
from .trainer import TrainResult, train

__all__ = ["TrainResult", "lr_at", "train"]
