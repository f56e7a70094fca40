"""The downloader, offline: archives built here, served over loopback HTTP and file:// URLs."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest

from data_fixtures import (
    assert_one_line_naming,
    make_tar_gz,
    make_zip,
    md5_of,
    serve_directory,
    write_cifar10,
    write_tiny_imagenet,
)
from lbgat.data import download_dataset, load_dataset
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


def assert_untouched(root: Path) -> None:
    """Nothing was added to ``root``: no layout folder, no temporary file or folder."""
    assert sorted(p.name for p in root.iterdir()) == ["unrelated.txt"]


def test_http_download_then_load(cifar10_archive: Path, data_root: Path, capsys) -> None:
    with serve_directory(cifar10_archive.parent) as base_url:
        folder = download_dataset(
            "cifar10", data_root, url=f"{base_url}/{cifar10_archive.name}", md5=md5_of(cifar10_archive)
        )
    assert folder == data_root / "cifar-10-batches-py"
    assert sorted(p.name for p in data_root.iterdir()) == ["cifar-10-batches-py", "unrelated.txt"]
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


def test_existing_folder_is_not_downloaded_again(data_root: Path, capsys) -> None:
    (data_root / "cifar-100-python").mkdir()
    unreachable = "http://127.0.0.1:9/never-fetched.tar.gz"
    assert download_dataset("cifar100", data_root, url=unreachable) == data_root / "cifar-100-python"
    assert "already exists" in capsys.readouterr().err


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
