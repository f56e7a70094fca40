"""The downloader, offline: archives built here, served over loopback HTTP and file:// URLs."""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from helpers.data_fixtures import (
    assert_one_line_naming,
    make_tar_gz,
    make_zip,
    md5_of,
    serve_directory,
    write_cifar10,
    write_cifar100,
    write_pickle,
    write_tiny_imagenet,
)
from lbgat.cli import main
from lbgat.data import download, download_dataset, load_dataset
from lbgat.errors import ConfigError, DataError


@pytest.fixture
def cifar10_archive(tmp_path: Path) -> Path:
    """A cifar-10-python.tar.gz of generated batches, in its own folder."""
    write_cifar10(tmp_path / "source")
    (tmp_path / "served").mkdir()
    return make_tar_gz(
        tmp_path / "source", "cifar-10-batches-py", tmp_path / "served" / "cifar-10-python.tar.gz"
    )


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    (root / "unrelated.txt").write_text("already here")
    return root


def tree_digest(root: Path) -> dict[str, str]:
    """Every file, folder and link under ``root`` with its content's sha256 (folders: 'dir')."""
    def content(path: Path) -> str:
        if path.is_symlink():
            return f"link to {os.readlink(path)}"
        return "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()

    return {str(path.relative_to(root)): content(path) for path in sorted(root.rglob("*"))}


def assert_untouched(root: Path) -> None:
    """Nothing was added to ``root``: no layout folder, no temporary file or folder."""
    assert sorted(p.name for p in root.iterdir()) == ["unrelated.txt"]


def test_http_download_then_load(cifar10_archive: Path, data_root: Path, capsys) -> None:
    with serve_directory(cifar10_archive.parent) as base_url:
        folder = download_dataset(
            "cifar10", data_root, url=f"{base_url}/{cifar10_archive.name}", md5=md5_of(cifar10_archive)
        )
    assert folder == data_root / "cifar-10-batches-py"
    assert sorted(p.name for p in data_root.iterdir()) == [
        "cifar-10-batches-py", "cifar-10-python.tar.gz", "unrelated.txt"]  # the archive is kept for repairs
    assert md5_of(data_root / "cifar-10-python.tar.gz") == md5_of(cifar10_archive)
    assert "extracted to" in capsys.readouterr().err
    expected = load_dataset("cifar10", cifar10_archive.parents[1] / "source")
    downloaded = load_dataset("cifar10", data_root)
    np.testing.assert_array_equal(downloaded.train.images.numpy(), expected.train.images.numpy())


def test_file_url_zip_download_of_tiny_imagenet(tmp_path: Path, data_root: Path, monkeypatch) -> None:
    monkeypatch.setenv("LBGAT_CACHE_DIR", str(tmp_path / "cache"))
    written = write_tiny_imagenet(tmp_path / "source")
    archive = make_zip(tmp_path / "source", "tiny-imagenet-200", tmp_path / "tiny-imagenet-200.zip")
    download_dataset("tiny-imagenet", data_root, url=archive.as_uri(), md5=md5_of(archive), progress=False)
    dataset = load_dataset("tiny-imagenet", data_root)
    assert len(dataset.train) == len(written["train"]) and len(dataset.test) == len(written["test"])


def test_existing_intact_folder_is_verified_and_not_downloaded_again(tmp_path: Path, data_root: Path,
                                                                     capsys) -> None:
    write_cifar100(data_root)
    before = tree_digest(data_root)
    unreachable = "http://127.0.0.1:9/never-fetched.tar.gz"
    assert download_dataset("cifar100", data_root, url=unreachable) == data_root / "cifar-100-python"
    assert "all 3 files present and readable; nothing downloaded" in capsys.readouterr().err
    assert tree_digest(data_root) == before


def test_checksum_mismatch_writes_nothing(cifar10_archive: Path, data_root: Path) -> None:
    url = cifar10_archive.as_uri()
    with pytest.raises(DataError) as caught:
        download_dataset("cifar10", data_root, url=url, md5="0" * 32, progress=False)
    message = assert_one_line_naming(caught.value, url)
    assert message == (
        f"checksum mismatch for {url}: expected md5 {'0' * 32}, got {md5_of(cifar10_archive)}; "
        "nothing was written"
    )
    assert_untouched(data_root)


def test_http_error_writes_nothing(cifar10_archive: Path, data_root: Path) -> None:
    with serve_directory(cifar10_archive.parent) as base_url:
        url = f"{base_url}/missing.tar.gz"
        with pytest.raises(DataError, match="HTTP 404") as caught:
            download_dataset("cifar10", data_root, url=url, progress=False)
    assert_one_line_naming(caught.value, url)
    assert_untouched(data_root)


def _tar_member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = linkname
    return member


@pytest.mark.parametrize(
    "member",
    [
        _tar_member("cifar-10-batches-py/../../escaped.txt"),
        _tar_member("/tmp/lbgat-absolute-escape.txt"),
        _tar_member("cifar-10-batches-py/link", tarfile.SYMTYPE, "../../escaped.txt"),
        _tar_member("cifar-10-batches-py/abs-link", tarfile.SYMTYPE, "/etc/passwd"),
        _tar_member("cifar-10-batches-py/hard", tarfile.LNKTYPE, "../escaped.txt"),
        _tar_member("cifar-10-batches-py/tty", tarfile.CHRTYPE),
    ],
    ids=["dotdot", "absolute", "symlink-out", "symlink-absolute", "hardlink-out", "device"],
)
def test_unsafe_tar_member_is_refused(tmp_path: Path, data_root: Path, member: tarfile.TarInfo) -> None:
    write_cifar10(tmp_path / "source")
    archive = make_tar_gz(tmp_path / "source", "cifar-10-batches-py", tmp_path / "evil.tar.gz", [member])
    with pytest.raises(DataError, match="refusing the archive") as caught:
        download_dataset("cifar10", data_root, url=archive.as_uri(), md5=md5_of(archive), progress=False)
    assert_one_line_naming(caught.value, member.name)
    assert_untouched(data_root)
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/lbgat-absolute-escape.txt").exists()


def test_unsafe_zip_member_is_refused(tmp_path: Path, data_root: Path) -> None:
    write_tiny_imagenet(tmp_path / "source")
    archive = make_zip(tmp_path / "source", "tiny-imagenet-200", tmp_path / "evil.zip", ["../escaped.txt"])
    with pytest.raises(DataError, match="'..'"):
        download_dataset(
            "tiny-imagenet", data_root, url=archive.as_uri(), md5=md5_of(archive), progress=False
        )
    assert_untouched(data_root)
    assert not (tmp_path / "escaped.txt").exists()


@pytest.mark.parametrize(
    ("content", "problem"), [(b"just some bytes", "neither a tar nor a zip"), (None, "no top-level")]
)
def test_unusable_archive_writes_nothing(
    tmp_path: Path, data_root: Path, content: bytes | None, problem: str
) -> None:
    archive = tmp_path / "archive.tar.gz"
    if content is None:  # a valid archive holding the wrong folder
        write_cifar10(tmp_path / "source")
        make_tar_gz(tmp_path / "source", "cifar-10-batches-py", archive)
    else:
        archive.write_bytes(content)
    with pytest.raises(DataError, match=problem):
        download_dataset("cifar100", data_root, url=archive.as_uri(), md5=md5_of(archive), progress=False)
    assert_untouched(data_root)


def test_unknown_dataset_and_scheme_are_config_errors(data_root: Path) -> None:
    with pytest.raises(ConfigError, match="downloadable: cifar10, cifar100, tiny-imagenet"):
        download_dataset("mnist-5k", data_root)
    with pytest.raises(ConfigError, match="only http, https, file"):
        download_dataset("cifar10", data_root, url="ftp://example.org/cifar.tar.gz")
    assert_untouched(data_root)


# --- verifying and repairing a folder that is there -----------------------------


@pytest.fixture
def downloaded(cifar10_archive: Path, data_root: Path) -> Path:
    """cifar10 downloaded from a file:// URL into data_root (the archive kept beside it)."""
    download_dataset("cifar10", data_root, url=cifar10_archive.as_uri(), md5=md5_of(cifar10_archive), progress=False)
    return data_root / "cifar-10-batches-py"


def test_a_removed_batch_is_named_then_restored_from_the_kept_archive(
    cifar10_archive: Path, data_root: Path, downloaded: Path, capsys
) -> None:
    """`rm data_batch_3`; training/info name the file and the command, which repairs it."""
    original = (downloaded / "data_batch_3").read_bytes()
    (downloaded / "data_batch_3").unlink()
    assert main(["data", "info", "cifar10", "--root", str(data_root)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error
    assert (f"{downloaded / 'data_batch_3'} is missing; `lbgat data download cifar10 --root {data_root}` "
            "will restore it") in error
    unreachable = "http://127.0.0.1:9/never-fetched.tar.gz"  # the kept archive is enough: no network
    assert main(["data", "download", "cifar10", "--root", str(data_root), "--url", unreachable,
                 "--md5", md5_of(cifar10_archive)]) == 0
    assert "restored data_batch_3" in capsys.readouterr().err
    assert (downloaded / "data_batch_3").read_bytes() == original
    assert (data_root / "unrelated.txt").read_text() == "already here"
    assert main(["data", "info", "cifar10", "--root", str(data_root)]) == 0


def test_a_damaged_batch_is_replaced_and_kept_aside_downloading_again_without_an_archive(
    cifar10_archive: Path, data_root: Path, downloaded: Path, capsys
) -> None:
    """A truncated batch is named on training; download fetches the archive again
    (the kept one was removed), replaces the batch and keeps the damaged bytes as test_batch.damaged."""
    (data_root / "cifar-10-python.tar.gz").unlink()
    (downloaded / "notes.txt").write_text("mine")
    original = (downloaded / "test_batch").read_bytes()
    damaged = original[:1000]
    (downloaded / "test_batch").write_bytes(damaged)
    assert main(["train", "--method", "natural", "--model", "tiny-cnn", "--dataset", "cifar10", "--data-root",
                 str(data_root), "--batch-size", "4", "--max-steps", "1", "--no-progress",
                 "--out", str(data_root.parent / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and str(downloaded / "test_batch") in error and "truncated or corrupt" in error
    assert f"`lbgat data download cifar10 --root {data_root}` will replace it" in error
    with serve_directory(cifar10_archive.parent) as base_url:
        download_dataset("cifar10", data_root, url=f"{base_url}/{cifar10_archive.name}",
                         md5=md5_of(cifar10_archive), progress=False)
    assert (downloaded / "test_batch").read_bytes() == original
    assert (downloaded / "test_batch.damaged").read_bytes() == damaged
    assert (downloaded / "notes.txt").read_text() == "mine"
    assert md5_of(data_root / "cifar-10-python.tar.gz") == md5_of(cifar10_archive)  # kept again
    assert not [p for p in downloaded.iterdir() if p.name.startswith(".lbgat")]
    load_dataset("cifar10", data_root)


@pytest.mark.parametrize("obstacle", ["folder", "dangling-link"])
def test_something_unknown_in_the_way_is_one_line_and_nothing_changes(
    cifar10_archive: Path, data_root: Path, downloaded: Path, obstacle: str
) -> None:
    """Lbgat replaces only files it can account for."""
    path = downloaded / "data_batch_2"
    path.unlink()
    if obstacle == "folder":
        path.mkdir()
        (path / "inside.txt").write_text("x")
    else:
        os.symlink(data_root / "nowhere", path)
    before = tree_digest(data_root)
    with pytest.raises(DataError, match="is in the way") as caught:
        download_dataset("cifar10", data_root, url=cifar10_archive.as_uri(), md5=md5_of(cifar10_archive),
                         progress=False)
    assert_one_line_naming(caught.value, path)
    assert tree_digest(data_root) == before


def test_a_file_where_the_dataset_folder_belongs_is_in_the_way(data_root: Path, cifar10_archive: Path) -> None:
    """A file in the dataset folder's place is refused, not overwritten."""
    (data_root / "cifar-10-batches-py").write_text("not a folder")
    with pytest.raises(DataError, match="is in the way"):
        download_dataset("cifar10", data_root, url=cifar10_archive.as_uri(), md5=md5_of(cifar10_archive),
                         progress=False)
    assert (data_root / "cifar-10-batches-py").read_text() == "not a folder"


def test_official_checksums_readable_copies_of_ones_own_are_left_alone(
    cifar10_archive: Path, data_root: Path, downloaded: Path, monkeypatch, capsys
) -> None:
    """Against known per-file checksums (here those of the generated archive, standing
    in for torchvision's official list) an intact folder verifies; a file that reads cleanly but differs
    is reported and left alone; a missing one is restored."""
    official = download.SOURCES["cifar10"]
    file_md5s = tuple((name, md5_of(downloaded / name)) for name in download.CIFAR10.files)
    monkeypatch.setitem(download.SOURCES, "cifar10", download.ArchiveSource(
        url=cifar10_archive.as_uri(), md5=md5_of(cifar10_archive), folder=official.folder, file_md5s=file_md5s))
    download_dataset("cifar10", data_root)
    assert "all 7 files present and readable, 7 of them matching the official checksums" in capsys.readouterr().err
    write_pickle(downloaded / "data_batch_1", {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]})
    own = (downloaded / "data_batch_1").read_bytes()
    (downloaded / "batches.meta").unlink()
    download_dataset("cifar10", data_root)
    err = capsys.readouterr().err
    assert "restored batches.meta" in err
    assert "data_batch_1 in" in err and "differ from the official files" in err
    assert (downloaded / "data_batch_1").read_bytes() == own
    assert md5_of(downloaded / "batches.meta") == dict(file_md5s)["batches.meta"]


def test_tiny_imagenet_missing_val_image_is_named_and_restored(tmp_path: Path, data_root: Path, monkeypatch,
                                                               capsys) -> None:
    """Without a kept archive the folder's structure is checked; a missing listed image
    sends download to the archive, which restores it."""
    monkeypatch.setenv("LBGAT_CACHE_DIR", str(tmp_path / "cache"))
    write_tiny_imagenet(tmp_path / "source")
    archive = make_zip(tmp_path / "source", "tiny-imagenet-200", tmp_path / "tiny-imagenet-200.zip")
    download_dataset("tiny-imagenet", data_root, url=archive.as_uri(), md5=md5_of(archive), progress=False)
    (data_root / "tiny-imagenet-200.zip").unlink()
    folder = data_root / "tiny-imagenet-200"
    victim = sorted((folder / "val" / "images").iterdir())[0]
    original = victim.read_bytes()
    victim.unlink()
    with pytest.raises(DataError) as caught:
        load_dataset("tiny-imagenet", data_root)
    assert_one_line_naming(caught.value, victim, f"`lbgat data download tiny-imagenet --root {data_root}` "
                                                 "will restore it")
    download_dataset("tiny-imagenet", data_root, url=archive.as_uri(), md5=md5_of(archive))
    assert f"restored val/images/{victim.name}" in capsys.readouterr().err
    assert victim.read_bytes() == original
    load_dataset("tiny-imagenet", data_root)
    download_dataset("tiny-imagenet", data_root, url="http://127.0.0.1:9/never-fetched.zip", md5=md5_of(archive))
    assert "files present and readable; nothing downloaded" in capsys.readouterr().err  # the kept archive's list
