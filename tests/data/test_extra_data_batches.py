"""Batches with extra data are composed as the references' semi-supervised sampler composes them (its stored
output), hold the share of extra examples that was asked, and are a function of (seed, epoch, position) only."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.data_fixtures import write_extra_npz
from helpers.paths import FIXTURES
from lbgat.data import from_tensors
from lbgat.data.extra import ExtraData, load_extra
from lbgat.data.loader import Augment, DeviceLoader
from lbgat.data.mixed_loader import MixedLoader, draw_extra
from lbgat.runtime.rng import hash_words

OFFICIAL = json.loads((FIXTURES / "official_extra_data_batches.json").read_text())


def in_memory_extra(count: int, seed: int = 1) -> ExtraData:
    rng = np.random.default_rng(seed)
    return ExtraData(rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, count),
                     "memory", "pickle")


def mixed(train: int, batch_size: int, fraction: float, *, extra: ExtraData | None = None, seed: int = 5,
          augment: Augment | None = None, rank: int = 0, world_size: int = 1, held_out: int = 0,
          side: int = 32) -> MixedLoader:
    """``side``: the original images' size (1 where only the composition is looked at)."""
    rng = np.random.default_rng(0)
    total = train + held_out
    dataset = from_tensors(rng.integers(0, 256, (total, 3, side, side), dtype=np.uint8), rng.integers(0, 10, total),
                           rng.integers(0, 256, (2, 3, side, side), dtype=np.uint8), np.arange(2))
    base = DeviceLoader(dataset.train, batch_size=batch_size, seed=seed, indices=torch.arange(held_out, total),
                        augment=augment or Augment(crop_padding=4, flip=True), shuffle=True, rank=rank,
                        world_size=world_size)
    return MixedLoader(base, extra or in_memory_extra(1000), fraction, first_key=total)


@pytest.mark.parametrize("setting", OFFICIAL["settings"],
                         ids=lambda s: f"n{s['train']}-b{s['batch_size']}-f{s['fraction']}")
def test_batches_are_composed_as_the_official_sampler(setting: dict) -> None:
    """The number of batches in an epoch, each batch's size and original count, and how many distinct original
    examples an epoch sees, as the official sampler with the num_batches its training scripts pass."""
    loader = mixed(setting["train"], setting["batch_size"], setting["fraction"], side=1)
    order = loader.base.order(0)
    compositions = [loader.composition(0, number, order) for number in range(len(loader))]
    counts = [[len(c.key), int((~c.is_extra).sum())] for c in compositions]
    assert counts == setting["batches"]
    originals = torch.cat([c.source[~c.is_extra] for c in compositions])
    assert len(originals.unique()) == setting["distinct_originals"] == len(originals)


def test_each_batch_holds_the_share_of_extra_examples_asked_for() -> None:
    """int(batch * fraction) extra examples in every batch (the references' rounding), counted by their keys;
    only a short last slice of originals is topped up with more (when batches hold extra examples at all)."""
    for batch_size, fraction in ((128, 0.5), (512, 0.7), (100, 0.3), (64, 0.01)):
        loader = mixed(1000, batch_size, fraction)
        wanted = int(batch_size * fraction)
        originals_per_batch = batch_size - wanted
        assert len(loader) == math.ceil(1000 / batch_size)
        for number, batch in enumerate(loader.batches(2)):
            originals = min(originals_per_batch, 1000 - number * originals_per_batch)
            extra = int((batch.index >= loader.first_key).sum())
            assert len(batch) == (batch_size if wanted else originals)
            assert extra == len(batch) - originals
            assert extra == wanted or number == len(loader) - 1


def test_batch_contents_are_the_drawn_examples() -> None:
    """Without augmentation each example is its source image and label; extra keys are distinct."""
    extra = in_memory_extra(50)
    loader = mixed(40, 16, 0.5, extra=extra, augment=Augment(crop_padding=0, flip=False))
    images = loader.base.images
    for number, batch in enumerate(loader.batches(0)):
        plan = loader.composition(0, number)
        assert torch.equal(batch.index, plan.key)
        for position in range(len(batch)):
            source = int(plan.source[position])
            if plan.is_extra[position]:
                want = torch.from_numpy(extra.images[source]).permute(2, 0, 1)
                assert int(batch.y[position]) == int(extra.labels[source])
            else:
                want = images[source]
            assert torch.equal(batch.x[position], want.float() / 255)
    keys = torch.cat([loader.composition(0, n).key for n in range(len(loader))])
    assert len(keys.unique()) == len(keys)  # two draws of one extra image are augmented and attacked apart


def test_the_extra_draws_are_uniform_64_bit_multiply_shifts() -> None:
    """An independent computation in Python integers: floor(word64 * count / 2**64)."""
    slots = torch.arange(1000, 1400)
    for count in (1, 7, 500_000, 20_000_000, 2**31 - 1):
        drawn = draw_extra(3, 4, slots, count)
        words = hash_words(3, 20, 4, slots[:, None], torch.arange(2)[None, :])
        expected = [((int(high) << 32 | int(low)) * count) >> 64 for high, low in words.tolist()]
        assert drawn.tolist() == expected
        assert 0 <= int(drawn.min()) and int(drawn.max()) < count
    spread = draw_extra(0, 0, torch.arange(100_000), 10).bincount(minlength=10)
    assert int(spread.min()) > 9_600 and int(spread.max()) < 10_400


def test_batches_depend_on_seed_epoch_and_position_only() -> None:
    """Resuming at batch k gives batch k; processes' shares make up the one-process batch; the order within a
    batch mixes both kinds, so every process gets extra and original examples."""
    loader = mixed(300, 64, 0.5)
    straight = list(loader.batches(1))
    resumed = list(mixed(300, 64, 0.5).batches(1, start=3))
    for a, b in zip(straight[3:], resumed, strict=True):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.index, b.index)
    shares = [list(mixed(300, 64, 0.5, rank=rank, world_size=4).batches(1)) for rank in range(4)]
    for number, whole in enumerate(straight):
        parts = [share[number] for share in shares]
        assert torch.equal(torch.cat([p.x for p in parts]), whole.x)
        assert torch.equal(torch.cat([p.index for p in parts]), whole.index)
        assert all(p.global_size == 64 for p in parts)
        assert all(0 < int((p.index >= loader.first_key).sum()) < len(p) for p in parts)
    assert not torch.equal(straight[0].index, next(mixed(300, 64, 0.5, seed=6).batches(1)).index)
    assert not torch.equal(straight[0].index, next(loader.batches(2)).index)


def test_original_examples_follow_the_order_a_run_without_extra_data_visits(tmp_path: Path) -> None:
    """The originals of an epoch are the plain loader's permutation, taken a slice at a time; held-out
    examples never appear."""
    loader = mixed(200, 32, 0.25, held_out=20, extra=load_extra(write_extra_npz(tmp_path / "x.npz", 100)))
    order = loader.base.order(3)
    seen = torch.cat([c.source[~c.is_extra] for c in (loader.composition(3, n) for n in range(len(loader)))])
    assert torch.equal(seen.sort().values, order[:len(seen)].sort().values)
    assert int(seen.min()) >= 20
