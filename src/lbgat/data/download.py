"""Downloading a dataset archive: checksum verified, extraction checked, nothing left half-written.

This is the only place in lbgat that touches the network. Everything is staged in one temporary
folder inside the data root (so the final rename stays on one file system) and that folder is
removed whatever happens; the layout folder appears only once it is complete.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import posixpath
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from lbgat.data.cifar import CIFAR10, CIFAR100
from lbgat.data.tiny_imagenet import FOLDER as TINY_IMAGENET_FOLDER
from lbgat.errors import ConfigError, DataError


@dataclass(frozen=True)
class ArchiveSource:
    url: str
    md5: str
    folder: str  # the layout folder at the top level of the archive


SOURCES: dict[str, ArchiveSource] = {
    "cifar10": ArchiveSource(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder=CIFAR10.folder,
    ),
    "cifar100": ArchiveSource(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder=CIFAR100.folder,
    ),
    "tiny-imagenet": ArchiveSource(
        url="http://cs231n.stanford.edu/tiny-imagenet-200.zip",
        md5="90528d7ca1a48142e341f4ef8d21d0de",
        folder=TINY_IMAGENET_FOLDER,
    ),
}
DOWNLOADABLE = tuple(SOURCES)

_URL_SCHEMES = ("http", "https", "file")
_CHUNK_BYTES = 1 << 20
_TIMEOUT_S = 60
# Python >= 3.11.4 can also vet members itself (links resolved for real, special bits dropped).
_TAR_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def download_dataset(
    name: str,
    root: str | os.PathLike[str],
    *,
    url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
) -> Path:
    """Download and extract dataset ``name`` into ``root``; returns its layout folder.

    ``url`` and ``md5`` override the official archive (mirrors, tests); http, https and file
    URLs are accepted. If the layout folder already exists nothing is downloaded. On any
    failure every temporary file is removed and DataError says why in one line.
    """
    source = _source(name)
    url = url or source.url
    expected_md5 = (md5 or source.md5).lower()
    if urllib.parse.urlsplit(url).scheme not in _URL_SCHEMES:
        raise ConfigError(f"cannot download {url}: only {', '.join(_URL_SCHEMES)} URLs are supported")
    root = Path(root).expanduser()
    target = root / source.folder
    if target.exists():
        _say(progress, f"{name}: {target} already exists; nothing downloaded")
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".lbgat-download-", dir=root))
    except OSError as exc:
        raise DataError(f"{name}: cannot write to {root}: {exc.strerror or exc}") from exc
    try:
        archive = staging / "archive"
        actual_md5 = _fetch(url, archive, desc=name, progress=progress)
        if actual_md5 != expected_md5:
            raise DataError(
                f"checksum mismatch for {url}: expected md5 {expected_md5}, got {actual_md5}; "
                "nothing was written"
            )
        extracted = staging / "extracted"
        _extract(archive, extracted, url)
        if not (extracted / source.folder).is_dir():
            raise DataError(
                f"the archive from {url} has no top-level {source.folder} folder; nothing was written"
            )
        try:
            os.replace(extracted / source.folder, target)
        except OSError as exc:
            raise DataError(f"{name}: cannot move the data to {target}: {exc}; nothing was written") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _say(progress, f"{name}: extracted to {target}")
    return target


def _source(name: str) -> ArchiveSource:
    try:
        return SOURCES[name]
    except KeyError:
        raise ConfigError(
            f"cannot download dataset {name!r}; downloadable: {', '.join(SOURCES)} "
            "(mnist-5k is embedded, folder is your own data)"
        ) from None


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr)


def _fetch(url: str, destination: Path, *, desc: str, progress: bool) -> str:
    """Stream ``url`` into ``destination``; returns the md5 hex digest of what was received."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response, destination.open("wb") as out:
            length = response.headers.get("Content-Length")
            with tqdm(
                total=int(length) if length and length.isdigit() else None,
                desc=desc,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=not progress,
            ) as bar:
                while chunk := response.read(_CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError is an OSError
        raise DataError(f"download of {url} failed: {_describe(exc)}; nothing was written") from exc
    return digest.hexdigest()


def _describe(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _extract(archive: Path, destination: Path, url: str) -> None:
    """Extract a zip or tar archive after checking that every member stays inside ``destination``."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zip_file:
                for info in zip_file.infolist():
                    _refuse_if(_path_problem(info.filename), info.filename, url)
                zip_file.extractall(destination)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tar_file:
                for member in tar_file.getmembers():
                    _refuse_if(_tar_member_problem(member), member.name, url)
                tar_file.extractall(destination, **_TAR_FILTER)
        else:
            raise DataError(f"the file from {url} is neither a tar nor a zip archive; nothing was written")
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"the archive from {url} is damaged: {exc}; nothing was written") from exc


def _refuse_if(problem: str | None, member: str, url: str) -> None:
    if problem is not None:
        raise DataError(f"refusing the archive from {url}: member {member!r} {problem}; nothing was written")


def _path_problem(name: str) -> str | None:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "has an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "climbs out of the extraction folder with '..'"
    return None


def _tar_member_problem(member: tarfile.TarInfo) -> str | None:
    if problem := _path_problem(member.name):
        return problem
    if member.issym() or member.islnk():
        # A symlink resolves from its own folder, a hard link from the archive's top level.
        base = posixpath.dirname(member.name) if member.issym() else ""
        target = posixpath.normpath(posixpath.join(base, member.linkname))
        if member.linkname.startswith("/") or target == ".." or target.startswith("../"):
            return f"is a link pointing outside the archive ({member.linkname})"
        return None
    if not (member.isreg() or member.isdir()):
        return "is a device file, fifo or other special file"
    return None
