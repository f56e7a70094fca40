"""Batches that mix the training set with extra data (``data.extra``), composed as the references compose them.

The references are the semi-supervised sampler of Carmon et al. (2019, github yaircarmon/semisup-adv,
``datasets.SemiSupervisedSampler``), which Wang et al. (2023, github wzekai99/DM-Improves-AT,
``core/data/semisup.py``) use unchanged:

- a batch of B examples holds ``int(B * fraction)`` extra ones and ``B - int(B * fraction)`` original ones;
- an epoch is ``ceil(n / B)`` batches for n training examples: as many steps as without extra data (both
  training scripts pass ``num_batches = ceil(50000 / batch_size)``; RST: "the definition of an epoch as passing
  through 50K datapoints"). An epoch therefore sees a share ``1 - fraction`` of the original examples;
- the original examples are consecutive slices of the epoch's permutation (the order a run without extra data
  visits); where the last slice is short, its batch is filled up with extra examples, unless a batch holds none
  (``int(B * fraction) = 0``: then the batches are those of a run without extra data). The references draw a
  fresh permutation when one runs out; with ``ceil(n / B)`` batches of at most B originals it never does;
- the extra examples are drawn uniformly, with replacement;
- the examples of a batch stand in random order (the references shuffle each batch): under data parallelism,
  where each process takes a contiguous share, every process gets both kinds.

Every draw is a function of (seed, epoch, position), as everything in :mod:`lbgat.runtime.rng`: the epoch's
permutation of (seed, epoch), the extra image in slot j of batch b of (seed, epoch, b·B + j), the order in the
batch of (seed, epoch, b). An extra example's crop, flip and attack start are keyed by ``first_key + b·B + j``,
past every dataset index, so two draws of one image differ. Nothing depends on the number of processes or on
where a run resumed. The extra images are read on the host (only the batch's rows, :meth:`ExtraData.gather`),
moved to the device as uint8 and augmented there with the original ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..runtime.rng import Stream, hash_words
from .extra import ExtraData
from .loader import Batch, DeviceLoader


def extra_per_batch(batch_size: int, fraction: float) -> int:
    """Extra examples in a batch of ``batch_size`` (the references' ``int(batch_size * unsup_fraction)``)."""
    return int(batch_size * fraction)


@dataclass(frozen=True)
class Composition:
    """One global batch, in the order it is trained on: each example's randomness key, whether it is extra,
    and where it comes from (a dataset index, or an index into the extra data)."""

    key: torch.Tensor
    is_extra: torch.Tensor
    source: torch.Tensor

    def share(self, rank: int, world_size: int) -> Composition:
        """The contiguous share of process ``rank``."""
        parts = (torch.tensor_split(field, world_size)[rank] for field in (self.key, self.is_extra, self.source))
        return Composition(*parts)


def draw_extra(seed: int, epoch: int, slots: torch.Tensor, count: int) -> torch.Tensor:
    """Indices uniform in [0, ``count``) for the slots ``slots`` (int64, CPU): a 64-bit word per slot times
    ``count``, shifted by 64 bits (bias below count / 2**64; exact in int64 for count < 2**31)."""
    words = hash_words(seed, Stream.EXTRA_DRAW, epoch, slots[:, None], torch.arange(2)[None, :])
    high, low = words[:, 0], words[:, 1]
    return (high * count + ((low * count) >> 32)) >> 32


class MixedLoader:
    """The training batches of ``base`` (a shuffled :class:`DeviceLoader` over the training indices) with a
    share ``fraction`` of every batch drawn from ``extra``. ``first_key`` (the training split's size) is the
    first randomness key of the extra examples."""

    def __init__(self, base: DeviceLoader, extra: ExtraData, fraction: float, first_key: int) -> None:
        if not 0 <= fraction < 1:
            raise ValueError("fraction must be in [0, 1)")
        self.base = base
        self.extra = extra
        self.batch_size = base.batch_size
        self.extra_per_batch = extra_per_batch(base.batch_size, fraction)
        self.original_per_batch = self.batch_size - self.extra_per_batch
        self.first_key = first_key
        self._length = -(-len(base.indices) // self.batch_size)

    def __len__(self) -> int:
        return self._length

    @property
    def smallest_batch(self) -> int:
        # Every batch is full (a short slice of originals is topped up), unless no batch holds extra examples.
        return self.batch_size if self.extra_per_batch else self.base.smallest_batch

    def composition(self, epoch: int, number: int, order: torch.Tensor | None = None) -> Composition:
        """Global batch ``number`` of ``epoch`` (``order``: the epoch's permutation, if already computed)."""
        order = order if order is not None else self.base.order(epoch)
        size, seed = self.batch_size, self.base.seed
        originals = order[number * self.original_per_batch:(number + 1) * self.original_per_batch]
        size = size if self.extra_per_batch else len(originals)
        slots = number * self.batch_size + torch.arange(len(originals), size)
        drawn = draw_extra(seed, epoch, slots, len(self.extra))
        mix = torch.argsort(hash_words(seed, Stream.EXTRA_MIX, epoch, torch.tensor(number), torch.arange(size)),
                            stable=True)
        is_extra = torch.arange(size) >= len(originals)
        return Composition(torch.cat([originals, self.first_key + slots])[mix], is_extra[mix],
                           torch.cat([originals, drawn])[mix])

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Batches ``start``, ``start + 1``, ... of ``epoch`` (``start`` > 0 resumes mid-epoch)."""
        base = self.base
        order = base.order(epoch)
        for number in range(start, len(self)):
            plan = self.composition(epoch, number, order)
            local = plan.share(base.rank, base.world_size)
            yield base.finish(*self._gather(local), local.key.to(base.device), epoch, len(plan.key))

    def _gather(self, local: Composition) -> tuple[torch.Tensor, torch.Tensor]:
        """The share's uint8 images (n, C, H, W) and labels on the device, in the share's order: the original
        ones gathered on the device, the extra ones read on the host and copied over."""
        device = self.base.device
        originals = local.source[~local.is_extra].to(device)
        extra_images, extra_labels = self.extra.gather(local.source[local.is_extra].numpy())
        if device.type == "cuda":  # a pinned buffer lets the copy run while the host goes on
            extra_images, extra_labels = extra_images.pin_memory(), extra_labels.pin_memory()
        extra_images = extra_images.to(device, non_blocking=True).permute(0, 3, 1, 2)
        images = torch.cat([self.base.images[originals], extra_images])
        labels = torch.cat([self.base.labels[originals], extra_labels.to(device, non_blocking=True)])
        # Where each example of the share lies in the concatenation (originals first): one gather, no scatter.
        place = torch.empty(len(local.key), dtype=torch.int64)
        place[~local.is_extra] = torch.arange(len(originals))
        place[local.is_extra] = len(originals) + torch.arange(len(extra_labels))
        place = place.to(device)
        return images[place], labels[place]
