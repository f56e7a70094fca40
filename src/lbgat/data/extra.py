"""Extra training data (``data.extra``): pseudo-labelled or generated images drawn into every batch.

Two formats, the ones the field publishes its data in:

- the pickle of Carmon et al. (2019), ``ti_500K_pseudo_labeled.pickle``: a dict with ``data`` (N, 32, 32, 3)
  uint8 and ``extrapolated_targets`` (N integers). Read through the restricted unpickler (it never runs code),
  into host memory (1.5 GB for the 500K images);
- the ``.npz`` of Wang et al. (2023), ``image`` (N, 32, 32, 3) uint8 and ``label`` (N,): the images are left in
  the file (:mod:`.npz_file`) and each batch reads only its own, so 1 to 50 million images never have to fit in
  memory; the labels (8 bytes an image) are read into memory.

The images are (N, H, W, C) on the host; :meth:`ExtraData.gather` hands out a batch's rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .base import Dataset
from .dataset_unpickler import safe_unpickle
from .npz_file import StoredArray, open_npz

PICKLE_KEYS = ("data", "extrapolated_targets")  # Carmon et al. 2019
NPZ_KEYS = ("image", "label")  # Wang et al. 2023
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"  # pickle protocols 2 and later
_MAX_IMAGES = 2**31  # the draws' 64-bit multiply-shift (mixed_loader) stays inside int64 below this
# The fingerprint reads, besides every label, this many images spread evenly over the file and the first and
# last _EDGE_BYTES of the image bytes: a 60 GB file is identified in a fraction of a second (a full sha256
# would read all of it at every start and resume).
_SAMPLED_IMAGES = 4096
_EDGE_BYTES = 1 << 20
_SAMPLED_CHUNK = 256  # images read at a time for the fingerprint
_LABEL_CHUNK = 1 << 22  # labels hashed this many at a time (no int64 copy of 50 million at once)


@dataclass(frozen=True)
class ExtraData:
    """Extra images (N, H, W, C) uint8 on the host, in memory or left in their file, and their integer labels
    (in memory)."""

    images: np.ndarray | StoredArray
    labels: np.ndarray
    source: str  # the path it was read from
    format: str  # "npz" or "pickle"

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W), as the datasets say it."""
        height, width, channels = self.images.shape[1:]
        return int(channels), int(height), int(width)

    def gather(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The images (n, H, W, C) uint8 and labels (n,) int64 at ``indices``, read in ascending order of
        position in the file (each image once, however often it was drawn)."""
        unique, inverse = np.unique(indices, return_inverse=True)
        images = _rows(self.images, unique)[inverse]
        return torch.from_numpy(images), torch.from_numpy(self.labels[indices].astype(np.int64))

    @cached_property
    def fingerprint(self) -> str:
        """sha256 (hex) of the shapes, every label, the first and last MiB of the image bytes and 4,096 images
        evenly spaced (every image when there are fewer): the identity of the extra data, whatever its path
        or format (the pickle and the .npz of the same arrays agree)."""
        images, labels = self.images, self.labels
        digest = hashlib.sha256(f"lbgat-extra-v1 {tuple(images.shape)} {tuple(labels.shape)}".encode())
        for start in range(0, len(labels), _LABEL_CHUNK):
            digest.update(np.asarray(labels[start:start + _LABEL_CHUNK], dtype=np.int64).tobytes())
        image_bytes = int(np.prod(images.shape[1:]))
        edge = max(1, _EDGE_BYTES // image_bytes)
        picked = np.unique(np.concatenate([
            np.arange(min(edge, len(self))), np.arange(max(0, len(self) - edge), len(self)),
            np.linspace(0, len(self) - 1, min(_SAMPLED_IMAGES, len(self))).astype(np.int64)]))
        digest.update(picked.astype(np.int64).tobytes())
        for start in range(0, len(picked), _SAMPLED_CHUNK):
            digest.update(np.ascontiguousarray(_rows(images, picked[start:start + _SAMPLED_CHUNK])))
        return digest.hexdigest()

    def describe(self) -> dict[str, Any]:
        """What a checkpoint records about the extra data."""
        return {"fingerprint": self.fingerprint, "images": len(self), "format": self.format,
                "path": str(Path(self.source).resolve())}

    def check_fits(self, dataset: Dataset) -> None:
        """Refuse (one line) extra images of another shape than the dataset's, or labels outside its classes."""
        if self.image_shape != dataset.image_shape:
            shown = "x".join(map(str, self.image_shape))
            wanted = "x".join(map(str, dataset.image_shape))
            raise DataError(f"data.extra {self.source} holds {shown} images (CxHxW), but {dataset.name} has {wanted}")
        low, high = int(self.labels.min()), int(self.labels.max())
        if low < 0 or high >= dataset.num_classes:
            raise DataError(f"data.extra {self.source} has labels from {low} to {high}, but {dataset.name} has "
                            f"{dataset.num_classes} classes (0 to {dataset.num_classes - 1})")


def _rows(images: np.ndarray | StoredArray, indices: np.ndarray) -> np.ndarray:
    return images.read(indices) if isinstance(images, StoredArray) else images[indices]


def load_extra(path: str | Path) -> ExtraData:
    """The extra data at ``path``: a Carmon et al. pickle or a Wang et al. ``.npz`` (told apart by their first
    bytes). Missing files, other formats, wrong keys, shapes or types raise :class:`DataError` in one line."""
    path = Path(path).expanduser()
    try:
        with path.open("rb") as file:
            magic = file.read(len(_ZIP_MAGIC))
    except OSError as error:
        raise DataError(f"data.extra: cannot read {path}: {error.strerror or error}") from None
    if magic == _ZIP_MAGIC:
        arrays: dict[str, Any] = open_npz(path)
        keys, form = NPZ_KEYS, "npz"
    elif magic[:1] == _PICKLE_MAGIC:
        arrays = safe_unpickle(path)
        keys, form = PICKLE_KEYS, "pickle"
    else:
        raise DataError(f"data.extra {path} is neither an .npz (image, label) nor a pickle (data, "
                        "extrapolated_targets)")
    if not isinstance(arrays, dict) or not all(key in arrays for key in keys):
        found = ", ".join(map(str, arrays)) if isinstance(arrays, dict) else type(arrays).__name__
        raise DataError(f"data.extra {path} must hold {' and '.join(keys)} ({form}), found: {found}")
    images, labels = arrays[keys[0]], arrays[keys[1]]
    labels = labels if isinstance(labels, StoredArray) else np.asarray(labels)
    if (not isinstance(images, np.ndarray | StoredArray) or images.dtype != np.uint8 or len(images.shape) != 4
            or images.shape[3] not in (1, 3)):
        shown = (f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray | StoredArray)
                 else type(images).__name__)
        raise DataError(f"data.extra {path}: {keys[0]} must be uint8 images (N, H, W, C), got {shown}")
    if labels.shape != images.shape[:1] or labels.dtype.kind not in "iu":
        raise DataError(f"data.extra {path}: {keys[1]} must be one integer per image ({images.shape[0]}), got "
                        f"{labels.dtype} {labels.shape}")
    if not 0 < len(images) < _MAX_IMAGES:
        raise DataError(f"data.extra {path} holds {len(images)} images; lbgat takes 1 to {_MAX_IMAGES - 1}")
    labels = labels.read_all() if isinstance(labels, StoredArray) else labels
    return ExtraData(images, labels, str(path), form)
