"""Architectures by name, with input normalisation inside the model.

Importing this package registers every architecture and family of sizes (``wrn-D-W``); build
one with :func:`create_model`.
"""

from __future__ import annotations

# The architecture modules register their factories when imported.
from lbgat.models.flops import count_flops
from lbgat.models.normalize import InputNormalization
from lbgat.models.preact_resnet import PreActResNet
from lbgat.models.registry import (
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
from lbgat.models.resnet import ResNet
from lbgat.models.small import SmallCNN, TinyCNN
from lbgat.models.wideresnet import WideResNet

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
