"""A dataset built from tensors that a user passes from Python."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import Dataset, ImageSet


def from_tensors(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    classes: Sequence[str] | None = None,
    name: str = "tensors",
) -> Dataset:
    """Wrap in-memory data as a :class:`Dataset` (numpy arrays are accepted too).

    Images are (N, C, H, W), either uint8 (0..255, kept as is) or floating point in [0, 1],
    which is quantised to uint8 as ``round(x * 255)`` (round half to even): images that came
    from uint8 through ``x / 255`` are recovered exactly. Labels are integers in
    0..len(classes)-1; without ``classes`` the names are "0", "1", ... up to the largest label.
    Raises ValueError on a wrong shape, dtype or range.
    """
    train = _image_set(train_images, train_labels, "train")
    test = _image_set(test_images, test_labels, "test")
    if train.image_shape != test.image_shape:
        raise ValueError(f"train images are {train.image_shape} but test images {test.image_shape} (C, H, W)")
    largest_label = int(max(train.labels.max(), test.labels.max()))
    if classes is None:
        class_names = tuple(str(label) for label in range(largest_label + 1))
    else:
        class_names = tuple(classes)
        if not all(isinstance(c, str) for c in class_names) or len(set(class_names)) != len(class_names):
            raise ValueError("classes must be distinct strings")
        if largest_label >= len(class_names):
            raise ValueError(f"label {largest_label} has no class name ({len(class_names)} classes given)")
    return Dataset(name=name, train=train, test=test, classes=class_names, source="tensors (from Python)")


def _image_set(images: torch.Tensor, labels: torch.Tensor, split: str) -> ImageSet:
    images = _as_uint8_images(images, f"{split}_images")
    labels = _as_labels(labels, f"{split}_labels")
    if len(images) != len(labels):
        raise ValueError(f"{split} split has {len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise ValueError(f"{split} split is empty")
    return ImageSet(images, labels)


def _as_uint8_images(images: torch.Tensor, what: str) -> torch.Tensor:
    images = torch.as_tensor(images).cpu()
    if images.dim() != 4:
        raise ValueError(f"{what} must be (N, C, H, W), got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.contiguous()
    if not images.is_floating_point():
        raise ValueError(f"{what} must be uint8 (0..255) or floating point in [0, 1], got {images.dtype}")
    if images.numel() and not (images.isfinite().all() and images.min() >= 0 and images.max() <= 1):
        raise ValueError(f"{what} are floating point, so they must lie in [0, 1] (got values outside)")
    return images.float().mul(255).round_().to(torch.uint8)


def _as_labels(labels: torch.Tensor, what: str) -> torch.Tensor:
    labels = torch.as_tensor(labels).cpu()
    if labels.dim() != 1:
        raise ValueError(f"{what} must be one integer per image, shape (N,), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{what} must be integers, got {labels.dtype}")
    if labels.numel() and labels.min() < 0:
        raise ValueError(f"{what} must be non-negative class indices")
    return labels.to(torch.int64)
