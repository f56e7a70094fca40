"""CIFAR ResNet-18 (kuangliu/pytorch-cifar layout) and the LBGAT teacher ``ResNet18_cifar``.

Both use the official key names (``conv1``, ``bn1``, ``layerN.M.*``, ``layerN.0.shortcut.0/1``,
``linear``) and PyTorch's default initialisation, as the originals do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .normalize import InputNormalization
from .registry import register_model


class BasicBlock(nn.Module):
    """Post-activation basic block; a 1×1 conv + BN shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(out)


def _stage(in_planes: int, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
    strides = [stride] + [1] * (num_blocks - 1)
    return nn.Sequential(
        *(BasicBlock(in_planes if i == 0 else planes, planes, s) for i, s in enumerate(strides))
    )


class ResNet(nn.Module):
    """ResNet: 3×3 stem, no max-pool, four stages of ``BasicBlock`` (64/128/256/512), pool, linear."""

    def __init__(
        self,
        blocks_per_stage: Sequence[int] = (2, 2, 2, 2),
        stage_strides: Sequence[int] = (1, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(blocks_per_stage) != 4 or len(stage_strides) != 4:
            raise ValueError("ResNet needs four stages")
        self.normalize = InputNormalization()
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = _stage(64, 64, blocks_per_stage[0], stage_strides[0])
        self.layer2 = _stage(64, 128, blocks_per_stage[1], stage_strides[1])
        self.layer3 = _stage(128, 256, blocks_per_stage[2], stage_strides[2])
        self.layer4 = _stage(256, 512, blocks_per_stage[3], stage_strides[3])
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        # Global average pool: at 32×32 exactly the originals' avg_pool2d(4) (resnet18) / (8) (LBGAT's).
        out = F.avg_pool2d(out, kernel_size=out.shape[-2:]).flatten(1)
        return self.linear(out)


@register_model(
    "resnet18",
    description=(
        "CIFAR ResNet-18 (kuangliu/pytorch-cifar): stage strides 1/2/2/2, 4×4 final map at 32×32 "
        "(11.2M params, 1.11 GFLOP at 3×32×32)"
    ),
)
def resnet18(num_classes: int, in_channels: int, image_size: int) -> ResNet:
    return ResNet((2, 2, 2, 2), (1, 2, 2, 2), num_classes, in_channels)


@register_model(
    "resnet18-lbgat",
    description=(
        "LBGAT's teacher ResNet18_cifar (LBGAT models/resnetcifar.py): stage strides 1/1/2/2, 8×8 final map "
        "(11.2M params, 3.53 GFLOP at 3×32×32)"
    ),
    input_shape=(3, 32, 32),
)
def resnet18_lbgat(num_classes: int, in_channels: int, image_size: int) -> ResNet:
    return ResNet((2, 2, 2, 2), (1, 1, 2, 2), num_classes, in_channels)
