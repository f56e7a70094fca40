"""The official key layout of each architecture, and the classes of other code that load it.

lbgat's networks already use the key names of the code they reproduce (TRADES/LBGAT
``models/wideresnet.py``, LBGAT's ``ResNet18_cifar``, kuangliu's ResNet-18, Rice et al.'s
PreAct-ResNet-18, TRADES' SmallCNN); input normalisation lives in non-persistent buffers, so it
adds no keys. The one difference is ``sub_block1``: the official WideResNet always builds that
unused block, and lbgat leaves it out of ``wrn-10-1``. :func:`key_layout` says, for a built
model, how its ``state_dict`` maps to the official one and back, and which classes load the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .preact_resnet import PreActResNet
from .resnet import ResNet
from .small import SmallCNN
from .wideresnet import WideResNet, wideresnet_sizes

LBGAT_LAYOUT = "lbgat"  # an architecture with no official counterpart: lbgat's own keys
_DEAD_BLOCK = "sub_block1."


@dataclass(frozen=True)
class OfficialClass:
    """A class in another code base that loads the layout with ``strict=True``."""

    project: str  # e.g. "TRADES / LBGAT (models/wideresnet.py)"
    imports: str  # the import line, as that code base is laid out
    constructor: str  # the call that builds the matching network


@dataclass(frozen=True)
class KeyLayout:
    """How one built model's weights are written (``to_official``) and read back (``from_official``)."""

    name: str  # stored in the export; LBGAT_LAYOUT when there is no official counterpart
    description: str
    classes: tuple[OfficialClass, ...] = ()
    # Why the official classes cannot run this model although the keys follow their layout (its
    # input shape or class count), or None when they can.
    limitation: str | None = None
    # The dead WRN block the official class has and this model lacks: written as a copy of block1.
    adds_sub_block1: bool = False

    def to_official(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        official = {key: value.detach().cpu().contiguous() for key, value in state.items()}
        if self.adds_sub_block1:
            # Never run by the official forward; any values load. A copy of block1 keeps the file
            # deterministic and the block's shapes right (block1 and sub_block1 are built alike).
            official.update({_DEAD_BLOCK + key.removeprefix("block1."): value.clone()
                             for key, value in state.items() if key.startswith("block1.")})
        return official

    def from_official(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.adds_sub_block1:
            return {key: value for key, value in state.items() if not key.startswith(_DEAD_BLOCK)}
        return dict(state)

    @property
    def official(self) -> bool:
        return self.name != LBGAT_LAYOUT


def _shape_limitation(arch: str, in_channels: int, image_size: int, needed: tuple[int, int],
                      num_classes: int | None = None, classes_needed: int | None = None) -> str | None:
    channels, size = needed
    problems = []
    if (in_channels, image_size) != (channels, size):
        problems.append(f"{channels}×{size}×{size} inputs (this {arch} takes {in_channels}×{image_size}×{image_size})")
    if classes_needed is not None and num_classes != classes_needed:
        problems.append(f"{classes_needed} classes (this one has {num_classes})")
    if not problems:
        return None
    return "the official classes take only " + " and ".join(problems) + "; load it with lbgat.load_model"


def key_layout(model: nn.Module, arch: str, num_classes: int, in_channels: int, image_size: int) -> KeyLayout:
    """The layout of ``model`` (built by lbgat as ``arch``)."""
    if isinstance(model, WideResNet) and (sizes := wideresnet_sizes(arch)) is not None:
        depth, width = sizes
        return KeyLayout(
            "trades-lbgat-wideresnet",
            f"TRADES/LBGAT WideResNet-{depth}-{width} keys (conv1, block1-3.layer.N.*, convShortcut, "
            "sub_block1, bn1, fc), as RobustBench loads them with sub_block1=True",
            (OfficialClass("TRADES / LBGAT (models/wideresnet.py)", "from models.wideresnet import WideResNet",
                           f"WideResNet(depth={depth}, num_classes={num_classes}, widen_factor={width})"),
             OfficialClass("RobustBench", "from robustbench.model_zoo.architectures.wide_resnet import WideResNet",
                           f"WideResNet(depth={depth}, num_classes={num_classes}, widen_factor={width}, "
                           "sub_block1=True)")),
            _shape_limitation(arch, in_channels, image_size, (3, 32)),
            adds_sub_block1=getattr(model, "sub_block1", None) is None,
        )
    if isinstance(model, ResNet) and arch == "resnet18-lbgat":
        return KeyLayout(
            "lbgat-resnet18-cifar", "LBGAT's ResNet18_cifar keys (conv1, bn1, layer1-4.N.*, shortcut.0/1, linear)",
            (OfficialClass("LBGAT (models/resnetcifar.py)", "from models.resnetcifar import ResNet18_cifar",
                           f"ResNet18_cifar(num_classes={num_classes})"),),
            _shape_limitation(arch, in_channels, image_size, (3, 32)),
        )
    if isinstance(model, ResNet) and arch == "resnet18":
        return KeyLayout(
            "kuangliu-resnet18", "kuangliu/pytorch-cifar ResNet18 keys (conv1, bn1, layer1-4.N.*, shortcut.0/1, "
            "linear)",
            (OfficialClass("kuangliu/pytorch-cifar (models/resnet.py)", "from models.resnet import ResNet, BasicBlock",
                           f"ResNet(BasicBlock, [2, 2, 2, 2], num_classes={num_classes})"),
             OfficialClass("RobustBench", "from robustbench.model_zoo.architectures.resnet import ResNet, BasicBlock",
                           f"ResNet(BasicBlock, [2, 2, 2, 2], num_classes={num_classes})")),
            _shape_limitation(arch, in_channels, image_size, (3, 32)),
        )
    if isinstance(model, PreActResNet) and arch == "preact-resnet18":
        return KeyLayout(
            "rice-preact-resnet18", "Rice et al. 2020 / AWP PreActResNet18 keys (conv1, layer1-4.N.*, shortcut.0, "
            "bn, linear)",
            (OfficialClass("Rice et al. 2020 robust_overfitting / AWP (preactresnet.py)",
                           "from preactresnet import PreActResNet, PreActBlock",
                           f"PreActResNet(PreActBlock, [2, 2, 2, 2], num_classes={num_classes})"),
             OfficialClass("RobustBench", "from robustbench.model_zoo.architectures.resnet import PreActResNet, "
                           "PreActBlockV2",
                           f"PreActResNet(PreActBlockV2, [2, 2, 2, 2], num_classes={num_classes}, "
                           "bn_before_fc=True)")),
            _shape_limitation(arch, in_channels, image_size, (3, 32)),
        )
    if isinstance(model, SmallCNN) and arch == "small-cnn":
        return KeyLayout(
            "trades-small-cnn", "TRADES SmallCNN keys (feature_extractor.conv1-4, classifier.fc1-3); its dropout "
            "has no weights",
            (OfficialClass("TRADES (models/small_cnn.py)", "from models.small_cnn import SmallCNN", "SmallCNN()"),),
            _shape_limitation(arch, in_channels, image_size, (1, 28), num_classes, 10),
        )
    return KeyLayout(LBGAT_LAYOUT, f"lbgat's own {arch} keys: no official code defines this architecture")
