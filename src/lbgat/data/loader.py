"""A device-resident loader: uint8 images on the device, augmentation batched on the device.

The order of examples is a permutation that depends only on (seed, epoch); crops, flips and IDBH's draws
depend only on (seed, epoch, example index) (see :mod:`lbgat.runtime.rng`). A global batch is the same
whatever the number of processes; each rank takes its contiguous share of it.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..runtime.rng import ExampleRNG, Stream, permutation
from . import idbh
from .base import ImageSet

# data.augment: crop-flip (crop_padding and flip below) or a version of IDBH (lbgat.data.idbh).
CROP_FLIP = "crop-flip"
AUGMENTS: tuple[str, ...] = (CROP_FLIP, *idbh.VERSIONS)


@dataclass(frozen=True)
class Augment:
    """``kind`` crop-flip: random crop after zero padding (0 = off) and random horizontal flip, as torchvision's
    RandomCrop(size, padding) + RandomHorizontalFlip. Any other kind is a version of IDBH, which flips and
    crop-shifts by itself (``crop_padding`` and ``flip`` unused)."""

    crop_padding: int = 4
    flip: bool = True
    kind: str = CROP_FLIP

    @property
    def active(self) -> bool:
        return self.kind != CROP_FLIP or self.crop_padding > 0 or self.flip


NO_AUGMENT = Augment(crop_padding=0, flip=False)


@dataclass
class Batch:
    """Images in [0, 1] (float32), labels, and the index of each example: its dataset index, which keys its
    randomness (for an extra-data example, :mod:`lbgat.data.mixed_loader`, a key past the dataset's indices)."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    epoch: int
    seed: int
    global_size: int = 0  # examples in the whole step across processes (0: this batch is the whole step)

    def __post_init__(self) -> None:
        if not self.global_size:
            self.global_size = len(self)

    @property
    def rng(self) -> ExampleRNG:
        return ExampleRNG(self.seed, self.epoch, self.index)

    def __len__(self) -> int:
        return int(self.y.shape[0])


def augment_batch(images: torch.Tensor, rng: ExampleRNG, augment: Augment) -> torch.Tensor:
    """Crop and flip a uint8 batch (B, C, H, W) in one gather, or IDBH; returns uint8 of the same shape."""
    if not augment.active:
        return images
    if augment.kind != CROP_FLIP:
        return idbh.augment(images, rng, idbh.VERSIONS[augment.kind])
    batch, channels, height, width = images.shape
    pad = augment.crop_padding
    device = images.device
    if pad > 0:
        images = F.pad(images, (pad, pad, pad, pad))
        offsets = rng.integers(Stream.CROP, 2 * pad + 1, (2,))
    else:
        offsets = torch.zeros(batch, 2, dtype=torch.int64, device=device)
    rows = offsets[:, 0:1] + torch.arange(height, device=device)
    columns = torch.arange(width, device=device).expand(batch, width)
    if augment.flip:
        flipped = rng.uniform(Stream.FLIP) < 0.5
        columns = torch.where(flipped[:, None], columns.flip(1), columns)
    columns = columns + offsets[:, 1:2]
    batch_index = torch.arange(batch, device=device)[:, None, None, None]
    channel_index = torch.arange(channels, device=device)[None, :, None, None]
    return images[batch_index, channel_index, rows[:, None, :, None], columns[:, None, None, :]]


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    return images.to(torch.float32).div_(255.0)


# (id of a source tensor, device) -> weak references to the source and to its copy on that device.
_device_copies: dict[tuple[int, str], tuple[weakref.ref, weakref.ref]] = {}


def shared_on_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``, copied once per device and shared by every loader of the same data
    (the training and held-out loaders read one training set: CIFAR is 154 MB, Tiny-ImageNet 1.2 GB
    per copy). Held weakly: the copy goes when the last loader using it does. Loaders never write
    into it."""
    if tensor.device == device:
        return tensor
    key = (id(tensor), str(device))
    if key in _device_copies:
        source, copy = (reference() for reference in _device_copies[key])
        if source is tensor and copy is not None:
            return copy
    for stale in [key for key, (source, copy) in _device_copies.items() if source() is None or copy() is None]:
        del _device_copies[stale]
    copy = tensor.to(device)
    _device_copies[key] = (weakref.ref(tensor), weakref.ref(copy))
    return copy


class DeviceLoader:
    """Iterates over batches of (a subset of) an :class:`ImageSet` held on ``device``.

    ``indices`` selects the examples (dataset indices, kept as the examples' identities for all
    randomness); None means all. Under ``world_size`` > 1 each global batch is split into
    contiguous shares and rank ``rank`` gets its own. With ``shuffle`` the order is a fresh permutation per epoch.
    The last, partial batch is kept unless ``drop_last``, as in the official training scripts.
    """

    def __init__(
        self,
        images: ImageSet,
        *,
        batch_size: int,
        seed: int,
        device: torch.device | str = "cpu",
        indices: torch.Tensor | None = None,
        augment: Augment = NO_AUGMENT,
        shuffle: bool = False,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError("rank must be in [0, world_size)")
        self.device = torch.device(device)
        self.images = shared_on_device(images.images, self.device)
        self.labels = shared_on_device(images.labels, self.device)
        self.indices = (torch.arange(len(images)) if indices is None else indices.to(torch.int64).cpu())
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        count = len(self.indices)
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    @property
    def smallest_batch(self) -> int:
        """Examples in the smallest global batch (the last one unless it is dropped or full)."""
        remainder = len(self.indices) % self.batch_size
        return remainder if remainder and not self.drop_last else min(self.batch_size, len(self.indices))

    def order(self, epoch: int) -> torch.Tensor:
        """Dataset indices in the order epoch ``epoch`` visits them (the same on every rank)."""
        if not self.shuffle:
            return self.indices
        return self.indices[permutation(len(self.indices), self.seed, Stream.ORDER, epoch)]

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Batches ``start``, ``start + 1``, ... of ``epoch`` (``start`` > 0 resumes mid-epoch)."""
        # On the device once per epoch: a copy per batch from (pageable) host memory would make the host
        # wait for the device at every step.
        order = self.order(epoch).to(self.device)
        for number in range(start, len(self)):
            global_batch = order[number * self.batch_size:(number + 1) * self.batch_size]
            local = torch.tensor_split(global_batch, self.world_size)[self.rank]
            yield self.finish(self.images[local], self.labels[local], local, epoch, len(global_batch))

    def finish(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, epoch: int,
               global_size: int) -> Batch:
        """A batch from uint8 images (B, C, H, W) on the device: augmented with the randomness of ``index``
        (see :class:`Batch`), in [0, 1], in the loader's memory format."""
        rng = ExampleRNG(self.seed, epoch, index)
        x = to_unit_float(augment_batch(images, rng, self.augment)).contiguous(memory_format=self.memory_format)
        return Batch(x, labels, index, epoch, self.seed, global_size)

    def __iter__(self) -> Iterator[Batch]:
        return self.batches(0)
