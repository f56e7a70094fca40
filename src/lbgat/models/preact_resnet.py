"""PreAct-ResNet-18 of Rice et al. 2020 ("Overfitting in adversarially robust deep learning") and AWP.

Same key names as their ``preactresnet.py`` (``conv1``, ``layerN.M.bn1/conv1/bn2/conv2``,
``layerN.0.shortcut.0``, ``bn``, ``linear``) and PyTorch's default initialisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .normalize import InputNormalization
from .registry import register_model


class PreActBlock(nn.Module):
    """Pre-activation basic block; when the shape changes, a 1×1 conv shortcut on the pre-activated input."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preactivated = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(preactivated)
        out = self.conv2(F.relu(self.bn2(self.conv1(preactivated))))
        return out + shortcut


def _stage(in_planes: int, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
    strides = [stride] + [1] * (num_blocks - 1)
    return nn.Sequential(
        *(PreActBlock(in_planes if i == 0 else planes, planes, s) for i, s in enumerate(strides))
    )


class PreActResNet(nn.Module):
    """Pre-activation ResNet: 3×3 stem, stages of 64/128/256/512 (strides 1/2/2/2), BN-ReLU, pool, linear."""

    def __init__(
        self, blocks_per_stage: Sequence[int] = (2, 2, 2, 2), num_classes: int = 10, in_channels: int = 3
    ) -> None:
        super().__init__()
        if len(blocks_per_stage) != 4:
            raise ValueError("PreActResNet needs four stages")
        self.normalize = InputNormalization()
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.layer1 = _stage(64, 64, blocks_per_stage[0], 1)
        self.layer2 = _stage(64, 128, blocks_per_stage[1], 2)
        self.layer3 = _stage(128, 256, blocks_per_stage[2], 2)
        self.layer4 = _stage(256, 512, blocks_per_stage[3], 2)
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        # Global average pool: at 32×32 inputs this is exactly the original avg_pool2d(out, 4).
        out = F.avg_pool2d(out, kernel_size=out.shape[-2:]).flatten(1)
        return self.linear(out)


@register_model(
    "preact-resnet18",
    description="PreAct-ResNet-18 of Rice et al. 2020 / AWP (11.2M params, 1.11 GFLOP at 3×32×32)",
)
def preact_resnet18(num_classes: int, in_channels: int, image_size: int) -> PreActResNet:
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels)
