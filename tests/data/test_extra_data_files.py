"""Extra training data (data.extra) is read from the field's two formats, the Carmon et al. pseudo-labelled
pickle and the Wang et al. generated-image .npz, without running code and without reading a .npz whole."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from helpers.data_fixtures import assert_one_line_naming, write_carmon_pickle, write_extra_npz
from lbgat.cli import main
from lbgat.data import from_tensors
from lbgat.data.extra import load_extra
from lbgat.data.npz_file import StoredArray, open_npz, store_uncompressed
from lbgat.errors import DataError


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_npz_rows_are_read_from_the_file_as_numpy_wrote_them(tmp_path: Path) -> None:
    path = write_extra_npz(tmp_path / "gen.npz", 300, chunk=64)
    stored = np.load(path)
    extra = load_extra(path)
    assert extra.format == "npz" and isinstance(extra.images, StoredArray) and len(extra) == 300
    assert extra.image_shape == (3, 32, 32)
    picks = np.array([299, 0, 17, 17, 150])
    images, labels = extra.gather(picks)
    assert np.array_equal(images.numpy(), stored["image"][picks])
    assert np.array_equal(labels.numpy(), stored["label"][picks])
    assert np.array_equal(extra.labels, stored["label"])


def test_a_savez_file_of_any_label_type_is_read(tmp_path: Path) -> None:
    """np.savez's own files (format 1.0 headers, small label types) as well as the streamed ones."""
    rng = np.random.default_rng(3)
    images, labels = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 20).astype(np.uint8)
    np.savez(tmp_path / "saved.npz", image=images, label=labels, extra_member=np.arange(3))
    extra = load_extra(tmp_path / "saved.npz")
    got, got_labels = extra.gather(np.arange(20))
    assert np.array_equal(got.numpy(), images) and np.array_equal(got_labels.numpy(), labels.astype(np.int64))


def test_carmon_pickle_is_read_without_running_code(tmp_path: Path) -> None:
    written = write_carmon_pickle(tmp_path / "ti_500K_pseudo_labeled.pickle", 40)
    extra = load_extra(tmp_path / "ti_500K_pseudo_labeled.pickle")
    assert extra.format == "pickle" and len(extra) == 40
    images, labels = extra.gather(np.arange(40))
    assert np.array_equal(images.numpy(), written.train_images)
    assert np.array_equal(labels.numpy(), written.train_labels)


def test_a_malicious_pickle_is_refused_in_one_line(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    bad = tmp_path / "ti_500K_pseudo_labeled.pickle"
    bad.write_bytes(pickle.dumps({"data": Exploit(marker), "extrapolated_targets": [0]}, protocol=4))
    with pytest.raises(DataError) as error:
        load_extra(bad)
    assert "refusing to unpickle posix.system" in assert_one_line_naming(error.value, bad)
    assert not marker.exists()


def test_the_same_arrays_have_the_same_fingerprint_in_either_format(tmp_path: Path) -> None:
    written = write_carmon_pickle(tmp_path / "ti.pickle", 30)
    np.savez(tmp_path / "same.npz", image=written.train_images, label=written.train_labels)
    pickled, stored = load_extra(tmp_path / "ti.pickle"), load_extra(tmp_path / "same.npz")
    assert pickled.fingerprint == stored.fingerprint
    changed = written.train_images.copy()
    changed[-1, 0, 0, 0] ^= 1  # one bit of the last image
    np.savez(tmp_path / "other.npz", image=changed, label=written.train_labels)
    assert load_extra(tmp_path / "other.npz").fingerprint != stored.fingerprint
    relabelled = written.train_labels.copy()
    relabelled[0] = (relabelled[0] + 1) % 10
    np.savez(tmp_path / "relabelled.npz", image=written.train_images, label=relabelled)
    assert load_extra(tmp_path / "relabelled.npz").fingerprint != stored.fingerprint


def test_a_compressed_npz_is_refused_and_store_npz_rewrites_it(tmp_path: Path, capsys) -> None:
    packed = write_extra_npz(tmp_path / "packed.npz", 50, compressed=True)
    with pytest.raises(DataError) as error:
        load_extra(packed)
    message = assert_one_line_naming(error.value, packed)
    assert "compressed" in message and f"lbgat data store-npz {packed} OUT.npz" in message

    stored = tmp_path / "stored.npz"
    assert main(["data", "store-npz", str(packed), str(stored)]) == 0
    with zipfile.ZipFile(stored) as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}
    original, rewritten = np.load(packed), np.load(stored)
    assert all(np.array_equal(original[name], rewritten[name]) for name in ("image", "label"))
    assert load_extra(stored).fingerprint == load_extra(write_extra_npz(tmp_path / "plain.npz", 50)).fingerprint
    # never over a file that is there
    capsys.readouterr()
    assert main(["data", "store-npz", str(packed), str(stored)]) == 2
    assert "exists" in capsys.readouterr().err


def test_store_npz_joins_the_parts_of_a_split_set(tmp_path: Path) -> None:
    """As Wang et al.'s 20M and 50M sets come (20m_part1.npz, 20m_part2.npz): joined in order, streaming."""
    parts = [write_extra_npz(tmp_path / "part1.npz", 30, seed=1, compressed=True),
             write_extra_npz(tmp_path / "part2.npz", 20, seed=2, chunk=7)]
    store_uncompressed(parts, tmp_path / "joined.npz")
    joined, loaded = np.load(tmp_path / "joined.npz"), [np.load(part) for part in parts]
    for name in ("image", "label"):
        assert np.array_equal(joined[name], np.concatenate([part[name] for part in loaded]))
    assert len(load_extra(tmp_path / "joined.npz")) == 50
    np.savez(tmp_path / "small.npz", image=np.zeros((2, 28, 28, 3), np.uint8), label=np.zeros(2, np.int64))
    with pytest.raises(DataError, match="cannot join the image.npy arrays, their rows differ"):
        store_uncompressed([parts[1], tmp_path / "small.npz"], tmp_path / "mixed.npz")
    assert not (tmp_path / "mixed.npz").exists()
    damaged = tmp_path / "damaged.npz"
    data = bytearray(parts[0].read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the deflated images
    damaged.write_bytes(bytes(data))
    with pytest.raises(DataError) as error:
        store_uncompressed([damaged], tmp_path / "out.npz")
    assert_one_line_naming(error.value, damaged)
    assert not (tmp_path / "out.npz").exists() and list(tmp_path.glob(".out.npz*")) == []


def test_bad_extra_files_are_refused_in_one_line(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    cases = {
        "missing.npz": None,
        "text.npz": b"not an archive",
        "keys.npz": {"images": images, "labels": np.zeros(8, np.int64)},
        "float.npz": {"image": images.astype(np.float32), "label": np.zeros(8, np.int64)},
        "count.npz": {"image": images, "label": np.zeros(7, np.int64)},
        "objects.npz": {"image": images, "label": np.array([0] * 8, dtype=object)},
    }
    for name, content in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, dict):
            np.savez(path, **content)
        with pytest.raises(DataError) as error:
            load_extra(path)
        assert_one_line_naming(error.value, path)
    truncated = write_extra_npz(tmp_path / "whole.npz", 64)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(truncated.read_bytes()[:100_000])
    with pytest.raises(DataError) as error:
        open_npz(cut)
    assert_one_line_naming(error.value, cut)


def test_extra_images_must_fit_the_dataset(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    dataset = from_tensors(rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8), np.arange(4),
                           rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8), np.arange(2))  # 4 classes
    np.savez(tmp_path / "small.npz", image=rng.integers(0, 256, (5, 28, 28, 3), dtype=np.uint8),
             label=np.zeros(5, np.int64))
    np.savez(tmp_path / "labels.npz", image=rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8),
             label=np.array([0, 1, 2, 3, 9]))
    with pytest.raises(DataError, match="holds 3x28x28 images"):
        load_extra(tmp_path / "small.npz").check_fits(dataset)
    with pytest.raises(DataError, match="labels from 0 to 9, but tensors has 4 classes"):
        load_extra(tmp_path / "labels.npz").check_fits(dataset)
