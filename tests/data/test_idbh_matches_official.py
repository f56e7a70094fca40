"""lbgat's batched IDBH against the official code's outputs (TreeLLi/DA-Alone-Improves-AT 38b740a through
torchvision 0.28.0 and Pillow 13.0.0), stored by tools/official_compare/idbh.py: each colour-or-shape operation
alone at several strengths, and the whole pipeline of every version with lbgat's draws fed to the official
draw sites. Every output must be equal, uint8 for uint8."""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import pytest
import torch

from helpers.idbh_cases import DRAW_FIELDS, EPOCHS, SEED, operation_draws, table_version
from helpers.paths import FIXTURES
from lbgat.data import idbh
from lbgat.runtime.rng import ExampleRNG

SOURCES = ("rgb32", "grey32", "rgb24x40", "coords32", "coords24x40")


@cache
def stored() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "idbh_official.npz", allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def operation_cases(name: str) -> list[tuple[str, int]]:
    return [(source, number) for source in SOURCES
            for number, operation in enumerate(stored()[f"{source}.op.operation"]) if operation == name]


def test_the_stored_outputs_are_the_official_codes() -> None:
    meta = json.loads(str(stored()["meta"]))
    assert meta["official"].startswith("TreeLLi/DA-Alone-Improves-AT 38b740aeffe5933c16869a126c6972ef443a8352")
    assert (meta["seed"], tuple(meta["epochs"])) == (SEED, EPOCHS)


@pytest.mark.parametrize("name", idbh.OPERATIONS)
def test_each_operation_equals_the_official_output(name: str) -> None:
    """Every stored case of the operation: the same image, operation and strength draw give the official
    uint8 output exactly (the blends at five strengths on colour and grey images, every rotation of +-1..30
    degrees and the shear of both tables, signs and axes on images whose pixels name their position)."""
    data = stored()
    cases = operation_cases(name)
    assert cases, f"no stored case of {name}"
    for source, number in cases:
        images = torch.from_numpy(data[f"{source}.images"])
        draws = operation_draws(
            name, str(data[f"{source}.op.table"][number]), len(images), u=float(data[f"{source}.op.u"][number]),
            negative=bool(data[f"{source}.op.negative"][number]), shear_x=bool(data[f"{source}.op.shear_x"][number]),
            degrees=int(data[f"{source}.op.degrees"][number]))
        ours = idbh.colour_shape(images, draws, table_version(str(data[f"{source}.op.table"][number])))
        expected = torch.from_numpy(data[f"{source}.op.out"][number])
        assert torch.equal(ours, expected), (source, number, int((ours.int() - expected.int()).abs().max()))
        if name not in ("autocontrast", "equalize") or source != "rgb32":
            continue
        flat = images[-1]  # the one-valued image: autocontrast and equalize leave it as it is
        assert torch.equal(ours[-1], flat)


@pytest.mark.parametrize("version", sorted(idbh.VERSIONS))
def test_the_whole_pipeline_equals_the_official_output(version: str) -> None:
    """flip, crop-shift, the drawn operation and erasing, with lbgat's draws for (seed, epoch, index) fed to
    the official code: the draws are still lbgat's (the stream is pinned) and the outputs the official ones."""
    data = stored()
    operations_seen: set[int] = set()
    for source in ("rgb32", "grey32", "rgb24x40"):
        images = torch.from_numpy(data[f"{source}.images"])
        _, _, height, width = images.shape
        for epoch in EPOCHS:
            prefix = f"{source}.{version}.epoch{epoch}"
            draws = idbh.draw(ExampleRNG(SEED, epoch, torch.arange(len(images))), idbh.VERSIONS[version], height, width)
            for field in DRAW_FIELDS:
                assert np.array_equal(getattr(draws, field).numpy(), data[f"{prefix}.draws.{field}"]), (prefix, field)
            ours = idbh.apply(images, draws, idbh.VERSIONS[version])
            assert torch.equal(ours, torch.from_numpy(data[f"{prefix}.out"])), prefix
            operations_seen |= set(idbh.chosen_operations(draws, idbh.VERSIONS[version], images.device).tolist())
    assert len(operations_seen) >= 5, operations_seen
