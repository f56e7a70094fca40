"""The WideResNet of TRADES and LBGAT (``models/wideresnet.py`` in both official repositories).

Module names, parameter shapes, construction order and initialisation follow the official
class, so released checkpoints load with ``strict=True`` and the logits are identical for
the same weights. Any ``wrn-D-W`` (D = 6n+4) builds in that layout; a few sizes are also
registered by name, with their size in the description.
"""

from __future__ import annotations

import functools
import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .flops import count_flops
from .normalize import InputNormalization
from .registry import ModelEntry, ModelFamily, register_model, register_model_family


class WideBasicBlock(nn.Module):
    """Pre-activation basic block (BN-ReLU-conv, twice) with a 1×1 shortcut conv when widths differ."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        # The official code keys this "convShortcut"; the name must stay for checkpoint compatibility.
        self.convShortcut: nn.Conv2d | None = None
        if in_planes != out_planes:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preactivated = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(preactivated))))
        # As in the official block: a widening shortcut gets the pre-activated input, an identity the raw one.
        shortcut = x if self.convShortcut is None else self.convShortcut(preactivated)
        return shortcut + out


class WideStage(nn.Module):
    """``num_blocks`` blocks at one width; the first one changes width and stride."""

    def __init__(self, num_blocks: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                for i in range(num_blocks)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` of TRADES/LBGAT: widths 16/16k/32k/64k, dropout 0, BN-ReLU, pool, FC.

    ``sub_block1`` is a copy of ``block1`` that the official model builds but never runs.
    It is kept by default so released checkpoints load strictly; it never gets a gradient.
    """

    def __init__(
        self,
        depth: int = 34,
        widen_factor: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        sub_block1: bool = True,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1, got {depth}")
        blocks_per_stage = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.normalize = InputNormalization()
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = WideStage(blocks_per_stage, widths[0], widths[1], 1)
        self.sub_block1 = WideStage(blocks_per_stage, widths[0], widths[1], 1) if sub_block1 else None
        self.block2 = WideStage(blocks_per_stage, widths[1], widths[2], 2)
        self.block3 = WideStage(blocks_per_stage, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        self._init_like_official()

    def _init_like_official(self) -> None:
        # Same order of RNG draws as the official loop, so a given seed gives the official initial weights.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = F.relu(self.bn1(out))
        # Global average pool: at 32×32 inputs this is exactly the official avg_pool2d(out, 8).
        out = F.avg_pool2d(out, kernel_size=out.shape[-2:]).flatten(1)
        return self.fc(out)


@register_model(
    "wrn-34-10",
    description=(
        "WideResNet-34-10 of TRADES/LBGAT, loads official checkpoints "
        "(46.2M params used + 2.1M in sub_block1, 13.3 GFLOP at 3×32×32)"
    ),
)
def wrn_34_10(num_classes: int, in_channels: int, image_size: int) -> WideResNet:
    return WideResNet(34, 10, num_classes, in_channels)


@register_model(
    "wrn-34-20",
    description=(
        "WideResNet-34-20 of TRADES/LBGAT, loads official checkpoints "
        "(184.5M params used + 8.4M in sub_block1, 53.2 GFLOP at 3×32×32)"
    ),
)
def wrn_34_20(num_classes: int, in_channels: int, image_size: int) -> WideResNet:
    return WideResNet(34, 20, num_classes, in_channels)


@register_model(
    "wrn-28-10",
    description=(
        "WideResNet-28-10 in the TRADES/LBGAT layout "
        "(36.5M params used + 1.6M in sub_block1, 10.5 GFLOP at 3×32×32)"
    ),
)
def wrn_28_10(num_classes: int, in_channels: int, image_size: int) -> WideResNet:
    return WideResNet(28, 10, num_classes, in_channels)


@register_model(
    "wrn-10-1",
    description="WideResNet-10-1 for CPU runs, no sub_block1 (0.08M params, 25.0 MFLOP at 3×32×32)",
)
def wrn_10_1(num_classes: int, in_channels: int, image_size: int) -> WideResNet:
    # Nothing official to load at this size, so the dead sub_block1 is left out.
    return WideResNet(10, 1, num_classes, in_channels, sub_block1=False)


# --- any size by name: wrn-D-W ---------------------------------------------------------------

_FAMILY_NAME = re.compile(r"wrn-(\d+)-(\d+)")


def wideresnet_sizes(name: str) -> tuple[int, int] | None:
    """(depth, widen factor) of a ``wrn-D-W`` name, None for a name of another form.

    Raises :class:`ConfigError` (the reason, one line) when D is not 6n+4, W is 0, or a size is
    written with leading zeros (``wrn-016-4`` would be a second name for one architecture).
    """
    match = _FAMILY_NAME.fullmatch(name)
    if match is None:
        return None
    depth, width = int(match[1]), int(match[2])
    if name != f"wrn-{depth}-{width}":
        raise ConfigError(f"write it as wrn-{depth}-{width}")
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ConfigError(f"WideResNet depth must be 6n+4 (10, 16, 22, 28, 34, 40, ...), got {depth}")
    if width < 1:
        raise ConfigError(f"WideResNet width must be an integer >= 1, got {width}")
    return depth, width


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f}M" if count < 1e6 else f"{count / 1e6:.1f}M"


def _flops_text(flops: int) -> str:
    return f"{flops / 1e9:.1f} GFLOP" if flops >= 1e9 else f"{flops / 1e6:.1f} MFLOP"


def describe_wideresnet(depth: int, width: int) -> str:
    """The official-layout WRN-depth-width with its size: parameters run, those in the dead
    ``sub_block1``, and FLOPs per 3×32×32 image (10 classes), counted on the meta device.

    The named sizes' descriptions are this text (tested), written out so listing costs nothing.
    """
    with torch.random.fork_rng(devices=[]), torch.device("meta"):  # no compute, no RNG draws seen outside
        model = WideResNet(depth, width, num_classes=10)
    dead = sum(p.numel() for p in model.sub_block1.parameters())
    used = sum(p.numel() for p in model.parameters()) - dead
    flops = count_flops(model, (3, 32, 32))
    return (
        f"WideResNet-{depth}-{width} in the TRADES/LBGAT layout "
        f"({_millions(used)} params used + {_millions(dead)} in sub_block1, {_flops_text(flops)} at 3×32×32)"
    )


@functools.cache
def _family_entry(name: str) -> ModelEntry | None:
    sizes = wideresnet_sizes(name)
    if sizes is None:
        return None
    depth, width = sizes

    def build(num_classes: int, in_channels: int, image_size: int) -> WideResNet:
        return WideResNet(depth, width, num_classes, in_channels)

    # No size in the description: counting it costs a second at first use; describe_wideresnet has it.
    description = f"WideResNet-{depth}-{width} in the TRADES/LBGAT layout (official keys, sub_block1 included)"
    return ModelEntry(name, description, build, None)


register_model_family(
    ModelFamily(
        pattern="wrn-D-W",
        description=(
            "WideResNet-D-W of TRADES/LBGAT for any depth D = 6n+4 (10, 16, 22, ...) and width W >= 1, "
            "official keys (sub_block1 included; the named wrn-10-1 leaves it out), e.g. wrn-16-4, wrn-70-16"
        ),
        resolve=_family_entry,
    )
)
