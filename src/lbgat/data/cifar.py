"""CIFAR-10 and CIFAR-100 in the official "python version" layout.

Files are read through :func:`safe_unpickle`; their checksums are not checked here (re-serialised
copies are fine; ``lbgat data download`` checks them against the official ones) and the
``filenames`` key is not needed. Every batch is checked for shape, length and label range. A
missing or unreadable file is named with the command that restores it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .base import Dataset, ImageSet
from .dataset_unpickler import safe_unpickle

_ROW_BYTES = 3 * 32 * 32
DAMAGED_SUFFIX = ".damaged"  # a file `lbgat data download` replaces is kept under its name + this


@dataclass(frozen=True)
class CifarLayout:
    """Where a CIFAR variant keeps its batches and under which keys."""

    dataset: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    labels_key: str
    names_key: str
    layout_hint: str  # the file list, as shown in error messages
    num_classes: int

    @property
    def layout(self) -> str:
        return f"{self.folder}/{self.layout_hint}"

    @property
    def files(self) -> tuple[str, ...]:
        """Every file the reader needs, in the layout folder."""
        return (self.meta_file, *self.train_files, *self.test_files)


CIFAR10 = CifarLayout(
    dataset="cifar10",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    meta_file="batches.meta",
    labels_key="labels",
    names_key="label_names",
    layout_hint="{data_batch_1..5,test_batch,batches.meta}",
    num_classes=10,
)
CIFAR100 = CifarLayout(
    dataset="cifar100",
    folder="cifar-100-python",
    train_files=("train",),
    test_files=("test",),
    meta_file="meta",
    labels_key="fine_labels",
    names_key="fine_label_names",
    layout_hint="{train,test,meta}",
    num_classes=100,
)


def load_cifar10(root: Path) -> Dataset:
    """CIFAR-10 from ``root/cifar-10-batches-py`` (or from that folder itself)."""
    return load_cifar(CIFAR10, root)


def load_cifar100(root: Path) -> Dataset:
    """CIFAR-100 (fine labels) from ``root/cifar-100-python`` (or from that folder itself)."""
    return load_cifar(CIFAR100, root)


def load_cifar(layout: CifarLayout, root: Path) -> Dataset:
    folder = _find_folder(layout, root)
    classes = _read_class_names(layout, folder)
    train = _read_split(layout, folder, layout.train_files, len(classes))
    test = _read_split(layout, folder, layout.test_files, len(classes))
    return Dataset(name=layout.dataset, train=train, test=test, classes=classes, source=str(folder))


def _find_folder(layout: CifarLayout, root: Path) -> Path:
    if (root / layout.folder).is_dir():
        folder = root / layout.folder
    elif root.name == layout.folder or (root / layout.meta_file).is_file():
        folder = root  # the user pointed at the layout folder itself
    else:
        raise DataError(
            f"{layout.dataset}: {root} has no {layout.folder} folder "
            f"(expected {root / layout.layout}; {_download_hint(layout, root)})"
        )
    for name in layout.files:
        path = folder / name
        if path.is_file():
            continue
        if os.path.lexists(path):
            raise DataError(f"{layout.dataset}: {path} is in the way (not a file): move it away, then "
                            f"{_repair_hint(layout, folder, 'restore')}")
        raise DataError(f"{layout.dataset}: {path} is missing; {_repair_hint(layout, folder, 'restore')}")
    return folder


def _download_hint(layout: CifarLayout, parent: Path) -> str:
    return f"get it with `lbgat data download {layout.dataset} --root {parent}`"


def _repair_hint(layout: CifarLayout, folder: Path, action: str) -> str:
    """What repairs a file of ``folder``: the download command when it manages that folder."""
    if folder.name == layout.folder:
        return f"`lbgat data download {layout.dataset} --root {folder.parent}` will {action} it"
    return f"put the file from the official {layout.folder} there"


def _corrupt(layout: CifarLayout, path: Path, problem: str) -> DataError:
    return DataError(f"{layout.dataset}: {path} {problem}; {_damage_hint(layout, path)}")


def _damage_hint(layout: CifarLayout, path: Path) -> str:
    hint = _repair_hint(layout, path.parent, "replace")
    if path.parent.name == layout.folder:
        hint += f" (keeping this file as {path.name}{DAMAGED_SUFFIX})"
    return hint


def file_problem(layout: CifarLayout, path: Path) -> str | None:
    """Why the reader cannot use ``path`` (one file of the layout), or None when it reads cleanly."""
    try:
        if path.name == layout.meta_file:
            _read_class_names(layout, path.parent)
        else:
            _read_batch(layout, path, layout.num_classes)
    except DataError as exc:
        return str(exc)
    return None


def _read_dict(layout: CifarLayout, path: Path) -> dict[str, Any]:
    try:
        content = safe_unpickle(path)
    except DataError as exc:
        raise DataError(f"{layout.dataset}: {exc}; {_damage_hint(layout, path)}") from exc
    if not isinstance(content, dict):
        raise _corrupt(layout, path, f"holds a {type(content).__name__}, not a dict")
    # Files written by Python 3 code that kept bytes keys are accepted as well.
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in content.items()}


def _read_class_names(layout: CifarLayout, folder: Path) -> tuple[str, ...]:
    path = folder / layout.meta_file
    names = _read_dict(layout, path).get(layout.names_key)
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, bytes)) for n in names):
        raise _corrupt(layout, path, f"has no '{layout.names_key}' list of class names")
    return tuple(n.decode("latin1") if isinstance(n, bytes) else n for n in names)


def _read_split(layout: CifarLayout, folder: Path, files: tuple[str, ...], num_classes: int) -> ImageSet:
    rows, labels = zip(*(_read_batch(layout, folder / name, num_classes) for name in files), strict=True)
    images = np.concatenate(rows).reshape(-1, 3, 32, 32)  # rows are channel-major: R plane, G, B
    return ImageSet(torch.from_numpy(images), torch.from_numpy(np.concatenate(labels)))


def _read_batch(layout: CifarLayout, path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _read_dict(layout, path)
    data = batch.get("data")
    if not isinstance(data, np.ndarray):
        raise _corrupt(layout, path, f"has no 'data' array (found {type(data).__name__})")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW_BYTES:
        found = f"{data.dtype} {data.shape}"
        raise _corrupt(layout, path, f"has no uint8 N x {_ROW_BYTES} 'data' array (found {found})")
    raw_labels = batch.get(layout.labels_key)
    labels = np.asarray(raw_labels) if isinstance(raw_labels, (list, np.ndarray)) else None
    if labels is None or labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise _corrupt(layout, path, f"has no '{layout.labels_key}' list of integers")
    if len(labels) != len(data):
        raise _corrupt(layout, path, f"has {len(data)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise _corrupt(layout, path, f"has labels outside 0..{num_classes - 1}")
    return data, labels.astype(np.int64)
