"""A user's own images: ``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``root/val``).

Also home of the image decoding shared with the Tiny-ImageNet reader.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..errors import DataError
from .base import Dataset, ImageSet

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})
FOLDER_LAYOUT = (
    "DIR/train/<class>/*.{png,jpg,jpeg,bmp,gif,webp} and DIR/test/<class>/* (or DIR/val/<class>/*)"
)
_SINGLE_CHANNEL_MODES = frozenset({"1", "L", "LA"})


def load_image_folder(root: Path, *, image_size: int | None = None, progress: bool = True) -> Dataset:
    """Read ``root/train`` and ``root/test`` (``root/val`` if there is no test folder).

    Classes are the sorted subfolder names of ``train/`` (hidden folders skipped). Images are
    grayscale (1 channel) if every one of them is single-channel, RGB otherwise. They must share
    one size unless ``image_size`` is given; then each is resized to image_size x image_size
    (Pillow bilinear, antialiased when shrinking).
    """
    train_dir = root / "train"
    test_dir = next((root / name for name in ("test", "val") if (root / name).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DataError(f"folder: {root} needs train/ and test/ (or val/) folders (expected {_layout(root)})")
    classes = _subfolders(train_dir)
    if not classes:
        raise DataError(f"folder: {train_dir} has no class subfolders (expected {_layout(root)})")
    unknown = sorted(set(_subfolders(test_dir)) - set(classes))
    if unknown:
        raise DataError(f"folder: {test_dir} has classes that {train_dir} lacks: {', '.join(unknown)}")
    train_files, train_labels = _list_split(train_dir, classes)
    test_files, test_labels = _list_split(test_dir, classes)

    files = train_files + test_files
    headers = [_read_header(path) for path in files]
    mode = "L" if all(m in _SINGLE_CHANNEL_MODES for _, m in headers) else "RGB"
    if image_size is None:
        size = headers[0][0]
        for path, (other, _) in zip(files, headers, strict=True):
            if other != size:
                raise DataError(
                    f"folder: {path} is {other[0]}x{other[1]} but {files[0]} is {size[0]}x{size[1]}; "
                    "all images must share one size, or give an image size to resize them to"
                )
    else:
        size = (image_size, image_size)
    images = decode_images(files, mode=mode, size=size, desc="folder: decoding", progress=progress)
    n_train = len(train_files)
    return Dataset(
        name="folder",
        train=ImageSet(torch.from_numpy(images[:n_train]), torch.tensor(train_labels, dtype=torch.int64)),
        test=ImageSet(torch.from_numpy(images[n_train:]), torch.tensor(test_labels, dtype=torch.int64)),
        classes=tuple(classes),
        source=str(root),
    )


def decode_images(
    paths: Sequence[Path], *, mode: str, size: tuple[int, int], desc: str, progress: bool
) -> np.ndarray:
    """Decode image files into one uint8 (N, C, H, W) array; ``size`` is (width, height).

    Images of another size are resized with Pillow's bilinear filter (antialiased when
    shrinking). Decoding runs on a few threads: Pillow releases the GIL while it decodes.
    """
    channels = 1 if mode == "L" else 3
    width, height = size
    images = np.empty((len(paths), channels, height, width), dtype=np.uint8)
    workers = min(8, os.cpu_count() or 1)
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar,
    ):
        for index, image in enumerate(pool.map(lambda p: read_image(p, mode=mode, size=size), paths)):
            images[index] = image
            bar.update()
    return images


def read_image(path: Path, *, mode: str, size: tuple[int, int]) -> np.ndarray:
    """One image file as uint8 (C, H, W) in ``mode`` ("RGB" or "L"), resized to ``size`` if needed."""
    try:
        with Image.open(path) as image:
            converted = image.convert(mode)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    if converted.size != size:
        converted = converted.resize(size, Image.Resampling.BILINEAR)
    pixels = np.asarray(converted)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _read_header(path: Path) -> tuple[tuple[int, int], str]:
    # Image.open reads only the header: size and mode come without decoding the pixels.
    try:
        with Image.open(path) as image:
            return image.size, image.mode
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"folder: cannot read image {path}: {exc}") from exc


def _subfolders(directory: Path) -> list[str]:
    return sorted(e.name for e in directory.iterdir() if e.is_dir() and not e.name.startswith("."))


def _list_split(split_dir: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue  # a test split may lack some classes
        images = sorted(
            p
            for p in class_dir.iterdir()
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
        )
        if not images:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            raise DataError(f"folder: {class_dir} has no images (looked for {suffixes})")
        files += images
        labels += [label] * len(images)
    if not files:
        raise DataError(f"folder: {split_dir} has no images")
    return files, labels


def _layout(root: Path) -> str:
    return FOLDER_LAYOUT.replace("DIR", str(root))
