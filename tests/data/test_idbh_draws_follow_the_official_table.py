"""IDBH's draws have the official code's semantics: the operation from the version's table (the first entry
whose closed interval holds the roll, bounds in float32), each strength from its range, the crop-shift's
strength and split, erasing with the version's probability; and they are the example's own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lbgat.data import idbh
from lbgat.runtime.rng import ExampleRNG

# The official tables (DA-Alone-Improves-AT src/data/idbh.py ColorShape), written out independently.
PROBABILITIES = {"colour": [0.125] * 8, "shape": [0.08, 0.08, 0.04, 0.08, 0.04, 0.08, 0.3, 0.3]}
VERSION_OF_TABLE = {"colour": "idbh-weak", "shape": "idbh-svhn"}


def chosen(version: str, rolls: list[float]) -> list[int]:
    draws = idbh.Draws(*(torch.zeros(len(rolls)) for _ in range(11)))
    draws.roll = torch.tensor(rolls, dtype=torch.float32)
    return idbh.chosen_operations(draws, idbh.VERSIONS[version], torch.device("cpu")).tolist()


@pytest.mark.parametrize("table", sorted(PROBABILITIES))
def test_a_roll_on_a_bound_takes_the_earlier_operation(table: str) -> None:
    """The official scan returns the first entry with lower <= roll <= upper, the float64 running sums
    compared as float32: a roll equal to a bound is the earlier entry's, the next float32 the later one's."""
    bounds = np.cumsum(PROBABILITIES[table]).astype(np.float32)
    version = VERSION_OF_TABLE[table]
    for number, bound in enumerate(bounds[:-1]):
        above = float(np.nextafter(bound, np.float32(2)))
        assert chosen(version, [float(bound), above]) == [number, number + 1], (table, number)
    assert chosen(version, [0.0, 1.0 - 2.0**-24]) == [0, 7]


def test_draws_follow_the_tables_and_ranges() -> None:
    """Over 40,000 examples: each operation as often as its probability says (within 5 standard errors),
    strengths and degrees inside their ranges, the crop-shift strength uniform over [0, high) and its split
    uniform over [0, strength], erasing as often as the version's probability allows."""
    count = 40_000
    rng = ExampleRNG(3, 2, torch.arange(count))
    for table, version_name in VERSION_OF_TABLE.items():
        version = idbh.VERSIONS[version_name]
        draws = idbh.draw(rng, version, 32, 32)
        chosen = idbh.chosen_operations(draws, version, torch.device("cpu"))
        frequencies = torch.bincount(chosen, minlength=9).double() / count
        for number, probability in enumerate(PROBABILITIES[table]):
            error = (probability * (1 - probability) / count) ** 0.5
            assert abs(frequencies[number] - probability) < 5 * error, (table, number)
        assert frequencies[8] == 0
        assert draws.strength.min() >= 0 and draws.strength.max() < 1
        high = 11 if table == "colour" else 31
        assert set(draws.degrees.tolist()) == set(range(1, high))
        strength, crop_x = draws.shift[:, 0], draws.shift[:, 1]
        assert set(strength.tolist()) == set(range(version.shift_high))
        assert bool(((crop_x >= 0) & (crop_x <= strength)).all())
        top = strength == version.shift_high - 1
        split = torch.bincount(crop_x[top], minlength=version.shift_high).double()
        assert split.min() > 0.8 * split.mean() and split.max() < 1.2 * split.mean()
        crop_y = strength - crop_x
        places = draws.shift[:, 2:]
        assert bool((places <= torch.stack([crop_x, crop_y, crop_x, crop_y], 1)).all()) and bool((places >= 0).all())
        assert abs(draws.flip.double().mean() - 0.5) < 0.02
        found, height, width = idbh.erase_size(draws.erase_area, draws.erase_ratio, version, 32, 32)
        erased = (found & (draws.erase_roll < version.erase_probability)).double().mean()
        assert version.erase_probability * 0.97 < erased <= version.erase_probability
        share = (height * width).double()[found] / 1024
        assert share.min() >= 0.015 and share.max() <= version.erase_scale[1] + 0.03
        assert bool((draws.erase_place[found, 0] <= 32 - height[found]).all())


def test_each_example_draws_alone() -> None:
    """An example's draws do not depend on the other examples of its batch (nor on their number)."""
    version = idbh.VERSIONS["idbh-strong"]
    batch = idbh.draw(ExampleRNG(5, 1, torch.tensor([3, 17, 5])), version, 32, 32)
    alone = idbh.draw(ExampleRNG(5, 1, torch.tensor([17])), version, 32, 32)
    for field in ("flip", "shift", "roll", "strength", "degrees", "negative", "shear_x", "erase_roll", "erase_area",
                  "erase_ratio", "erase_place"):
        assert torch.equal(getattr(batch, field)[1], getattr(alone, field)[0]), field
