"""Small generated datasets in each on-disk layout, archives of them, and a loopback web server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.paths import REPO_ROOT


@dataclass(frozen=True)
class WrittenSplits:
    """What a generator wrote, to compare with what a reader returns."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]


def cifar10_mini_root() -> Path:
    """$LBGAT_CIFAR10_MINI, else <repo>/../shared/data/cifar10-mini; skips the test if absent."""
    root = Path(os.environ.get("LBGAT_CIFAR10_MINI") or REPO_ROOT.parent / "shared" / "data" / "cifar10-mini")
    if not (root / "cifar-10-batches-py").is_dir():
        pytest.skip(f"cifar10-mini not found at {root} (set LBGAT_CIFAR10_MINI to its folder)")
    return root


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def assert_one_line_naming(error: BaseException, *paths: Path | str) -> str:
    """The message of a user-facing error: one line that names every given path."""
    message = str(error)
    assert "\n" not in message, message
    for path in paths:
        assert str(path) in message, f"{path} not named in: {message}"
    return message


# --- CIFAR ------------------------------------------------------------------------------------


def _random_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)


def write_pickle(path: Path, content: object, *, legacy_numpy_names: bool = False) -> None:
    """Pickle with protocol 2, as the official (Python 2 era) CIFAR files are.

    ``legacy_numpy_names`` makes the file name ``numpy.core.multiarray`` the way numpy 1 wrote it;
    protocol 2 spells globals as text, so the rename is a plain substitution.
    """
    raw = pickle.dumps(content, protocol=2)
    if legacy_numpy_names:
        raw = raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    path.write_bytes(raw)


def _cifar_batch(rows: np.ndarray, labels: np.ndarray, labels_key: str, title: str) -> dict[str, object]:
    return {
        "batch_label": title,
        labels_key: [int(label) for label in labels],
        "data": rows,
        "filenames": [f"image_{i}.png" for i in range(len(rows))],
    }


def write_cifar10(
    root: Path, *, per_batch: int = 3, test_size: int = 4, legacy_numpy_names: bool = False, seed: int = 0
) -> WrittenSplits:
    """A CIFAR-10 layout under ``root/cifar-10-batches-py`` with random images."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    classes = tuple(f"class_{i}" for i in range(10))
    write_pickle(
        folder / "batches.meta", {"label_names": list(classes), "num_vis": 3072, "num_cases_per_batch": 3}
    )
    train_rows, train_labels = _random_rows(rng, 5 * per_batch), rng.integers(0, 10, 5 * per_batch)
    for i in range(5):
        part = slice(i * per_batch, (i + 1) * per_batch)
        batch = _cifar_batch(train_rows[part], train_labels[part], "labels", f"training batch {i + 1} of 5")
        write_pickle(folder / f"data_batch_{i + 1}", batch, legacy_numpy_names=legacy_numpy_names)
    test_rows, test_labels = _random_rows(rng, test_size), rng.integers(0, 10, test_size)
    write_pickle(
        folder / "test_batch", _cifar_batch(test_rows, test_labels, "labels", "testing batch 1 of 1")
    )
    return WrittenSplits(
        train_rows.reshape(-1, 3, 32, 32),
        train_labels,
        test_rows.reshape(-1, 3, 32, 32),
        test_labels,
        classes,
    )


def write_cifar100(root: Path, *, train_size: int = 6, test_size: int = 4, seed: int = 0) -> WrittenSplits:
    """A CIFAR-100 layout under ``root/cifar-100-python`` with random images."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    classes = tuple(f"fine_{i}" for i in range(100))
    write_pickle(folder / "meta", {"fine_label_names": list(classes), "coarse_label_names": ["c"] * 20})
    splits = {}
    for name, size in (("train", train_size), ("test", test_size)):
        rows, labels = _random_rows(rng, size), rng.integers(0, 100, size)
        batch = _cifar_batch(rows, labels, "fine_labels", name)
        batch["coarse_labels"] = [int(label) // 5 for label in labels]
        write_pickle(folder / name, batch)
        splits[name] = (rows.reshape(-1, 3, 32, 32), labels)
    return WrittenSplits(*splits["train"], *splits["test"], classes)


# --- Images (Tiny-ImageNet, folders) -------------------------------------------------------------


def solid_color(label: int) -> tuple[int, int, int]:
    """A colour per class, far apart, so that a decoded (lossy) image still tells its class."""
    return ((label * 97) % 256, (label * 53 + 80) % 256, (255 - label * 71) % 256)


def write_image(path: Path, pixels: np.ndarray) -> None:
    """Save (H, W) or (H, W, 3) uint8 pixels; the format follows the file suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def class_image(label: int, size: tuple[int, int], *, gray: bool = False, noise_seed: int = 0) -> np.ndarray:
    """A (H, W, 3) image of the class colour with a little noise (or (H, W) when gray)."""
    height, width = size
    rng = np.random.default_rng(noise_seed)
    noise = rng.integers(-8, 9, size=(height, width, 3))
    pixels = np.clip(np.array(solid_color(label)) + noise, 0, 255).astype(np.uint8)
    return pixels.mean(axis=2).astype(np.uint8) if gray else pixels


TINY_WNIDS = ("n0300", "n0100", "n0200")  # deliberately not sorted in wnids.txt


def write_tiny_imagenet(root: Path, *, per_class: int = 2) -> dict[str, list[tuple[Path, int]]]:
    """A Tiny-ImageNet layout with 64x64 JPEGs; returns (file, label) per split in reader order.

    Labels follow sorted(wnids). One training image is grayscale. The val annotations are
    written in non-sorted order and carry bounding boxes, as the official file does.
    """
    folder = root / "tiny-imagenet-200"
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    (folder / "words.txt").write_text("n0100\tfirst thing, thing one\nn0200\tsecond thing\nn9999\tunused\n")
    label_of = {wnid: label for label, wnid in enumerate(sorted(TINY_WNIDS))}
    train = []
    for wnid in sorted(TINY_WNIDS):
        for i in range(per_class):
            path = folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG"
            gray = wnid == "n0200" and i == 0
            write_image(path, class_image(label_of[wnid], (64, 64), gray=gray, noise_seed=i))
            train.append((path, label_of[wnid]))
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    val_wnids = ["n0200", "n0300", "n0100", "n0300"]
    val = []
    lines = []
    for i, wnid in enumerate(val_wnids):
        path = folder / "val" / "images" / f"val_{i}.JPEG"
        write_image(path, class_image(label_of[wnid], (64, 64), noise_seed=10 + i))
        val.append((path, label_of[wnid]))
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    order = [2, 0, 3, 1]
    (folder / "val" / "val_annotations.txt").write_text("".join(lines[i] + "\n" for i in order))
    return {"train": train, "test": [val[i] for i in order]}


def write_image_folder(
    root: Path,
    classes: Sequence[str] = ("cat", "dog"),
    *,
    per_class: int = 2,
    size: tuple[int, int] = (12, 10),
    gray: bool = False,
    test_folder: str = "test",
) -> None:
    """``root/train/<class>/*.png`` and ``root/<test_folder>/<class>/*.png`` of class-coloured images."""
    for split in ("train", test_folder):
        for label, name in enumerate(classes):
            for i in range(per_class):
                pixels = class_image(label, size, gray=gray, noise_seed=i)
                write_image(root / split / name / f"{split}_{i}.png", pixels)


# --- Archives and serving -------------------------------------------------------------------------


def make_tar_gz(source_root: Path, folder: str, archive: Path, extra: Sequence[tarfile.TarInfo] = ()) -> Path:
    """``source_root/folder`` as a .tar.gz with ``folder`` at its top, plus ``extra`` members."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source_root / folder, arcname=folder)
        for member in extra:
            data = b"pwned" if member.isreg() else None
            member.size = len(data) if data else 0
            tar.addfile(member, io.BytesIO(data) if data else None)
    return archive


def make_zip(source_root: Path, folder: str, archive: Path, extra_names: Sequence[str] = ()) -> Path:
    """``source_root/folder`` as a .zip with ``folder`` at its top, plus files named ``extra_names``."""
    with zipfile.ZipFile(archive, "w") as zip_file:
        for path in sorted((source_root / folder).rglob("*")):
            zip_file.write(path, path.relative_to(source_root).as_posix())
        for name in extra_names:
            zip_file.writestr(name, b"pwned")
    return archive


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass


@contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve ``directory`` over HTTP on 127.0.0.1 (a free port); yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            thread.join()


# --- extra data (data.extra) ----------------------------------------------------------------------


def write_extra_npz(path: Path, count: int, *, seed: int = 0, num_classes: int = 10, chunk: int = 65536,
                    compressed: bool = False) -> Path:
    """A Wang et al. (2023) style .npz (``image`` (N, 32, 32, 3) uint8 random bytes, ``label`` (N,) int64),
    written ``chunk`` images at a time: a million images (3 GB) never sit in memory."""
    rng = np.random.default_rng(seed)
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method, allowZip64=True) as archive:
        with archive.open("image.npy", "w", force_zip64=True) as member:
            header = {"descr": "|u1", "fortran_order": False, "shape": (count, 32, 32, 3)}
            np.lib.format.write_array_header_1_0(member, header)
            for start in range(0, count, chunk):
                member.write(rng.bytes(min(chunk, count - start) * 32 * 32 * 3))
        with archive.open("label.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array(member, rng.integers(0, num_classes, count, dtype=np.int64))
    return path


def write_carmon_pickle(path: Path, count: int, *, seed: int = 0, num_classes: int = 10) -> WrittenSplits:
    """A Carmon et al. (2019) style pseudo-labelled pickle: ``data`` (N, 32, 32, 3) uint8, ``extrapolated_targets``
    (N,), and the other keys their script writes; returns the images (N, 32, 32, 3) and labels as train arrays."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, count)
    with path.open("wb") as file:
        pickle.dump({"data": images, "extrapolated_targets": labels, "prediction_model": "vanilla",
                     "prediction_model_epoch": 200}, file, protocol=4)
    empty = np.zeros((0, 32, 32, 3), np.uint8)
    return WrittenSplits(images, labels, empty, np.zeros(0, np.int64), tuple(map(str, range(num_classes))))
