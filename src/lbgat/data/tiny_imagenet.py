"""Tiny-ImageNet-200 in its official layout, with the labelled val split used as the test split.

Class index = position of the wnid in sorted(wnids), as torchvision's ImageFolder numbers the
train folders. Decoding 110,000 JPEGs takes minutes, so the decoded arrays are cached as .npy
files (see :func:`cache_dir`), keyed by the folder's absolute path, the image size and the
mtimes/sizes of its folders and index files: adding, removing or renaming images invalidates it.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..storage.files import atomic_file
from .base import Dataset, ImageSet
from .folder import decode_images

FOLDER = "tiny-imagenet-200"
LAYOUT = f"{FOLDER}/{{wnids.txt,train/<wnid>/images/*.JPEG,val/images/*.JPEG,val/val_annotations.txt}}"
IMAGE_SIZES = (32, 64)  # 32: resized as in the LBGAT paper; 64: native
_CACHE_FORMAT = 1  # bump when the decoded arrays would change, to ignore old caches
_JPEG_SUFFIXES = (".jpeg", ".jpg")


def cache_dir() -> Path:
    """Where decoded datasets are cached: $LBGAT_CACHE_DIR, else ~/.cache/lbgat."""
    return Path(os.environ.get("LBGAT_CACHE_DIR") or Path.home() / ".cache" / "lbgat")


def structure_problem(folder: Path) -> str | None:
    """Why the reader cannot list the images of the layout ``folder`` (a missing index file, class
    folder or listed val image), or None; the images themselves are not decoded."""
    try:
        wnids = _read_wnids(folder)
        _list_train(folder, wnids)
        _list_val(folder, wnids)
    except DataError as exc:
        return str(exc)
    return None


def load_tiny_imagenet(root: Path, *, image_size: int = 32, progress: bool = True) -> Dataset:
    """Tiny-ImageNet from ``root/tiny-imagenet-200`` (or that folder itself), RGB at image_size."""
    if image_size not in IMAGE_SIZES:
        raise DataError(f"tiny-imagenet: image size {image_size} is not offered; use 32 (resized) or 64")
    folder = _find_folder(root)
    wnids = _read_wnids(folder)
    cache = _SplitCache(folder, image_size, wnids)
    splits = cache.load()
    if splits is None:
        train_files, train_labels = _list_train(folder, wnids)
        test_files, test_labels = _list_val(folder, wnids)
        images = decode_images(
            train_files + test_files,
            mode="RGB",
            size=(image_size, image_size),
            desc="tiny-imagenet: decoding",
            progress=progress,
        )
        splits = {
            "train": ImageSet(torch.from_numpy(images[: len(train_files)]), torch.tensor(train_labels)),
            "test": ImageSet(torch.from_numpy(images[len(train_files) :]), torch.tensor(test_labels)),
        }
        cache.save(splits)
    return Dataset(
        name="tiny-imagenet",
        train=splits["train"],
        test=splits["test"],
        classes=_class_names(folder, wnids),
        source=str(folder),
    )


def _find_folder(root: Path) -> Path:
    if (root / FOLDER).is_dir():
        return root / FOLDER
    if (root / "wnids.txt").is_file():
        return root  # the user pointed at the layout folder itself
    raise DataError(
        f"tiny-imagenet: {root} has no {FOLDER} folder (expected {root / LAYOUT}; "
        f"get it with `lbgat data download tiny-imagenet --root {root}`)"
    )


def _restore_hint(folder: Path) -> str:
    """The command that restores a file of ``folder``, when lbgat's downloader manages that folder."""
    if folder.name == FOLDER:
        return f"; `lbgat data download tiny-imagenet --root {folder.parent}` will restore it"
    return ""


def _read_text(path: Path, folder: Path | None = None) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        hint = _restore_hint(folder) if folder is not None and not path.exists() else ""
        raise DataError(f"tiny-imagenet: cannot read {path}: {exc}{hint}") from exc


def _read_wnids(folder: Path) -> list[str]:
    path = folder / "wnids.txt"
    wnids = [line.strip() for line in _read_text(path, folder).splitlines() if line.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise DataError(f"tiny-imagenet: {path} must list distinct class wnids, one a line")
    return sorted(wnids)


def _class_names(folder: Path, wnids: list[str]) -> tuple[str, ...]:
    words_path = folder / "words.txt"
    words: dict[str, str] = {}
    if words_path.is_file():
        for line in _read_text(words_path).splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid] = text.strip()
    return tuple(words.get(wnid) or wnid for wnid in wnids)


def _list_train(folder: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
    files: list[Path] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        image_dir = folder / "train" / wnid / "images"
        images = _jpegs_in(image_dir)
        if not images:
            raise DataError(
                f"tiny-imagenet: {image_dir} has no JPEG images (expected {folder.parent / LAYOUT})"
                + _restore_hint(folder)
            )
        files += images
        labels += [label] * len(images)
    return files, labels


def _jpegs_in(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(
        p for p in directory.iterdir() if p.suffix.lower() in _JPEG_SUFFIXES and not p.name.startswith(".")
    )


def _list_val(folder: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
    """Val images in the order of val_annotations.txt (filename, wnid, bounding box; tab-separated)."""
    annotations = folder / "val" / "val_annotations.txt"
    label_of = {wnid: label for label, wnid in enumerate(wnids)}
    files: list[Path] = []
    labels: list[int] = []
    for line_number, line in enumerate(_read_text(annotations, folder).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        filename, wnid = fields[0], fields[1] if len(fields) > 1 else ""
        where = f"{annotations} line {line_number}"
        if wnid not in label_of:
            raise DataError(f"tiny-imagenet: {where} has no class from wnids.txt (found {line.strip()!r})")
        if filename != Path(filename).name or filename in ("", ".", ".."):
            raise DataError(f"tiny-imagenet: {where} names {filename!r}, not a file in val/images")
        path = folder / "val" / "images" / filename
        if not path.is_file():
            raise DataError(f"tiny-imagenet: {path} is listed in {annotations} but missing{_restore_hint(folder)}")
        files.append(path)
        labels.append(label_of[wnid])
    if len(set(files)) != len(files):
        raise DataError(f"tiny-imagenet: {annotations} lists some images twice")
    if not files:
        raise DataError(f"tiny-imagenet: {annotations} lists no images")
    return files, labels


class _SplitCache:
    """Decoded train/test arrays of one Tiny-ImageNet folder at one image size, as .npy files."""

    def __init__(self, folder: Path, image_size: int, wnids: list[str]) -> None:
        folder = folder.resolve()
        watched = [
            folder / "wnids.txt",
            folder / "words.txt",
            folder / "train",
            *(folder / "train" / wnid / "images" for wnid in wnids),
            folder / "val" / "images",
            folder / "val" / "val_annotations.txt",
        ]
        state = json.dumps([_CACHE_FORMAT, str(folder), image_size, [_stat(p) for p in watched]])
        # The folder's own digest prefixes every file name, so that a rebuild can drop stale versions.
        self._prefix = f"tiny-imagenet-{_digest(str(folder))}-{image_size}px-"
        self._stem = self._prefix + _digest(state)
        self._dir = cache_dir()
        self._num_classes = len(wnids)
        self._image_size = image_size

    def _path(self, split: str, kind: str) -> Path:
        return self._dir / f"{self._stem}-{split}-{kind}.npy"

    def load(self) -> dict[str, ImageSet] | None:
        """The cached splits, or None when absent, stale or unreadable."""
        splits = {}
        for split in ("train", "test"):
            try:
                images = np.load(self._path(split, "images"), allow_pickle=False)
                labels = np.load(self._path(split, "labels"), allow_pickle=False)
            except (OSError, ValueError):
                return None
            size = self._image_size
            if (
                images.dtype != np.uint8
                or images.shape[1:] != (3, size, size)
                or labels.dtype != np.int64
                or labels.shape != images.shape[:1]
                or (len(labels) and (labels.min() < 0 or labels.max() >= self._num_classes))
            ):
                return None
            splits[split] = ImageSet(torch.from_numpy(images), torch.from_numpy(labels))
        return splits

    def save(self, splits: dict[str, ImageSet]) -> None:
        """Write the splits atomically; a cache that cannot be written only costs time next run."""
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            for stale in self._dir.glob(self._prefix + "*.npy"):
                if not stale.name.startswith(self._stem):
                    stale.unlink()
            for split, image_set in splits.items():
                _save_atomically(self._path(split, "images"), image_set.images.numpy())
                _save_atomically(self._path(split, "labels"), image_set.labels.numpy())
        except OSError as exc:
            warnings.warn(f"could not cache decoded Tiny-ImageNet in {self._dir}: {exc}", stacklevel=3)


def _stat(path: Path) -> tuple[str, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return path.name, info.st_mtime_ns, info.st_size


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _save_atomically(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as file:
        np.save(file, array, allow_pickle=False)
