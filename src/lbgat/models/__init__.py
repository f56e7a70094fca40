"""Architectures by name, with input normalisation inside the model.

Importing this package registers every architecture and family of sizes (``wrn-D-W``); build
one with :func:`create_model`.
"""

from __future__ import annotations

# The architecture modules register their factories when imported.
from .flops import count_flops
from .normalize import InputNormalization
from .preact_resnet import PreActResNet
from .registry import (
    ModelEntry,
    ModelFamily,
    create_model,
    default_teacher,
    get_model_entry,
    list_model_families,
    list_models,
    register_model,
    register_model_family,
)
from .resnet import ResNet
from .small import SmallCNN, TinyCNN
from .wideresnet import WideResNet

__all__ = [
    "InputNormalization",
    "ModelEntry",
    "ModelFamily",
    "PreActResNet",
    "ResNet",
    "SmallCNN",
    "TinyCNN",
    "WideResNet",
    "count_flops",
    "create_model",
    "default_teacher",
    "get_model_entry",
    "list_model_families",
    "list_models",
    "register_model",
    "register_model_family",
]
