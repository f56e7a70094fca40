"""Downloading a dataset archive, and verifying and repairing a dataset folder that is already there.

This is the only place in lbgat that touches the network, and only on ``lbgat data download``. A
fresh download is staged in one temporary folder inside the data root (so the final rename stays on
one file system), removed whatever happens; the layout folder appears only once it is complete, and
the verified archive is kept beside it (``ROOT/cifar-10-python.tar.gz``, as torchvision keeps it) so
that a later repair needs no network.

When the layout folder exists, its files are checked (:mod:`lbgat.data.verify`): missing and
damaged files are taken from the kept archive if it still verifies, else from a fresh download. A
damaged file is renamed to ``NAME.damaged`` rather than deleted; files lbgat does not know are
never touched, and anything in the way stops the command before it changes anything.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..errors import ConfigError, DataError
from . import cifar
from .cifar import CIFAR10, CIFAR100, DAMAGED_SUFFIX, CifarLayout
from .tiny_imagenet import FOLDER as TINY_IMAGENET_FOLDER
from .tiny_imagenet import structure_problem
from .verify import FolderCheck, check_files, md5_of, some_names


@dataclass(frozen=True)
class ArchiveSource:
    url: str
    md5: str
    folder: str  # the layout folder at the top level of the archive
    # md5 of each file the reader needs, as listed for the official archive (torchvision's lists);
    # empty where unknown (Tiny-ImageNet: its files are checked against the archive's list instead)
    file_md5s: tuple[tuple[str, str], ...] = ()

    @property
    def archive_name(self) -> str:
        """The name the verified archive is kept under, in the data root."""
        return posixpath.basename(urllib.parse.urlsplit(self.url).path)


SOURCES: dict[str, ArchiveSource] = {
    "cifar10": ArchiveSource(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder=CIFAR10.folder,
        file_md5s=(
            ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
            ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
            ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
            ("data_batch_4", "634d18415352ddfa80567beed471001a"),
            ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
            ("test_batch", "40351d587109b95175f43aff81a1287e"),
            ("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
        ),
    ),
    "cifar100": ArchiveSource(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder=CIFAR100.folder,
        file_md5s=(
            ("train", "16019d7e3df5f24257cddd939b257f8d"),
            ("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),
            ("meta", "7973b15100ade9c7d40fb424638fde48"),
        ),
    ),
    "tiny-imagenet": ArchiveSource(
        url="http://cs231n.stanford.edu/tiny-imagenet-200.zip",
        md5="90528d7ca1a48142e341f4ef8d21d0de",
        folder=TINY_IMAGENET_FOLDER,
    ),
}
DOWNLOADABLE = tuple(SOURCES)
_CIFAR_LAYOUTS: dict[str, CifarLayout] = {"cifar10": CIFAR10, "cifar100": CIFAR100}

_URL_SCHEMES = ("http", "https", "file")
_CHUNK_BYTES = 1 << 20
_TIMEOUT_S = 60
# Python >= 3.11.4 can also vet members itself (links resolved for real, special bits dropped).
_TAR_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


@dataclass(frozen=True)
class _Job:
    """One ``lbgat data download``: what to get, from where, into which root."""

    name: str
    source: ArchiveSource
    root: Path
    url: str
    md5: str  # expected md5 of the archive
    progress: bool

    @property
    def target(self) -> Path:
        return self.root / self.source.folder

    @property
    def kept_archive(self) -> Path:
        return self.root / self.source.archive_name

    def say(self, message: str) -> None:
        _say(self.progress, f"{self.name}: {message}")


def download_dataset(
    name: str,
    root: str | os.PathLike[str],
    *,
    url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
) -> Path:
    """Download and extract dataset ``name`` into ``root``, or verify and repair it; returns its layout folder.

    ``url`` and ``md5`` override the official archive (mirrors, tests); http, https and file
    URLs are accepted. If the layout folder exists its files are checked and missing or damaged
    ones are put back from the archive (the kept one if it verifies, else downloaded); nothing is
    downloaded when every file is intact. On any failure every temporary file is removed and
    DataError says why in one line.
    """
    source = _source(name)
    url = url or source.url
    expected_md5 = (md5 or source.md5).lower()
    if urllib.parse.urlsplit(url).scheme not in _URL_SCHEMES:
        raise ConfigError(f"cannot download {url}: only {', '.join(_URL_SCHEMES)} URLs are supported")
    job = _Job(name, source, Path(root).expanduser(), url, expected_md5, progress)
    target = job.target
    if os.path.lexists(target) and not target.is_dir():
        what = "a symbolic link to nothing" if target.is_symlink() else "a file"
        raise DataError(f"{name}: {target} is in the way ({what} where the dataset folder belongs); "
                        "nothing was changed: move it away and run again")
    if target.is_dir():
        return _verify_and_repair(job)
    try:
        job.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".lbgat-download-", dir=job.root))
    except OSError as exc:
        raise DataError(f"{name}: cannot write to {job.root}: {exc.strerror or exc}") from exc
    try:
        archive, fetched = _obtain_archive(job, staging)
        where = url if fetched else str(archive)
        extracted = staging / "extracted"
        _extract(archive, extracted, where)
        if not (extracted / source.folder).is_dir():
            raise DataError(
                f"the archive from {where} has no top-level {source.folder} folder; nothing was written"
            )
        try:
            os.replace(extracted / source.folder, target)
        except OSError as exc:
            raise DataError(f"{name}: cannot move the data to {target}: {exc}; nothing was written") from exc
        if fetched:
            _keep_archive(job, archive)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    job.say(f"extracted to {target}")
    return target


def _verify_and_repair(job: _Job) -> Path:
    """Check the files of an existing layout folder; put missing and damaged ones back from the archive."""
    target = job.target
    names, problem_of = _expected_files(job.name)
    known_md5s = dict(job.source.file_md5s) if job.md5 == job.source.md5 else {}
    with _ArchiveAtHand(job) as archive:
        if names is None:  # only the archive lists every file
            if archive.kept() is None:
                problem = structure_problem(target)
                if problem is None:
                    job.say(f"{target}: every index file, class folder and listed image is present (single "
                            f"train images can be checked only against the archive, which is not in "
                            f"{job.root}); nothing downloaded")
                    return target
                job.say(f"{target} is incomplete ({_first_clause(problem)}); getting the archive to repair it")
            names = _archive_files(archive.path(), job.source.folder, archive.where)
        check = check_files(target, names, known_md5s, problem_of)
        if check.in_the_way:
            name, what = check.in_the_way[0]
            more = f" (and {len(check.in_the_way) - 1} more)" if len(check.in_the_way) > 1 else ""
            raise DataError(f"{job.name}: {target / name} is in the way ({what}){more}; nothing was changed: "
                            "move it away and run again")
        if not check.broken:
            _report_intact(job, check)
            return target
        set_aside = _put_back(job, archive.path(), archive.where, archive.staging(), check)
        archive.keep_if_fetched()
    after = check_files(target, check.broken, known_md5s, problem_of)
    if after.broken or after.in_the_way:
        raise DataError(f"{job.name}: {target / (after.broken or [after.in_the_way[0][0]])[0]} is still not "
                        f"intact after it was put back from {archive.where}; the archive holds no usable copy")
    restored = f"restored {some_names(check.missing)}" if check.missing else ""
    replaced = (f"replaced the damaged {some_names(check.damaged)} (kept as {some_names(set_aside)})"
                if check.damaged else "")
    job.say(f"{' and '.join(part for part in (restored, replaced) if part)} in {target} from {archive.where}")
    _report_differing(job, check)
    return target


class _ArchiveAtHand:
    """The verified archive for a repair, found (the kept one) or downloaded only when first asked for,
    with a private staging folder inside the layout folder (so that the final renames stay on its file
    system), removed on exit."""

    def __init__(self, job: _Job) -> None:
        self._job = job
        self._staging: Path | None = None
        self._kept: Path | None = None
        self._kept_checked = False
        self._path: Path | None = None
        self._fetched = False

    def __enter__(self) -> _ArchiveAtHand:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)

    def staging(self) -> Path:
        if self._staging is None:
            target = self._job.target
            try:
                self._staging = Path(tempfile.mkdtemp(prefix=".lbgat-repair-", dir=target))
            except OSError as exc:
                raise DataError(f"{self._job.name}: cannot write to {target}: {exc.strerror or exc}") from exc
        return self._staging

    def kept(self) -> Path | None:
        """The archive kept in the data root, if it still verifies (checked once)."""
        if not self._kept_checked:
            self._kept, self._kept_checked = _verified_kept_archive(self._job), True
        return self._kept

    def path(self) -> Path:
        if self._path is None:
            self._path = self.kept()
            if self._path is None:
                self._path, self._fetched = _download_archive(self._job, self.staging())
        return self._path

    @property
    def where(self) -> str:
        """The archive as messages name it: its URL when downloaded, else its path."""
        return self._job.url if self._fetched else str(self.path())

    def keep_if_fetched(self) -> None:
        if self._fetched and self._path is not None:
            _keep_archive(self._job, self._path)


def _first_clause(message: str) -> str:
    """The problem itself from a reader's message, without the dataset prefix and the advice."""
    return message.split("; ")[0].split(": ", 1)[-1]


def _expected_files(name: str) -> tuple[Sequence[str] | None, Callable[[Path], str | None] | None]:
    """The files a dataset's reader needs and how to tell a damaged one; None: ask the archive."""
    layout = _CIFAR_LAYOUTS.get(name)
    if layout is None:
        return None, None
    return layout.files, lambda path: cifar.file_problem(layout, path)


def _report_intact(job: _Job, check: FolderCheck) -> None:
    matched = (f", {check.matched_checksums} of them matching the official checksums"
               if check.matched_checksums else "")
    job.say(f"{job.target}: all {check.checked} files present and readable{matched}; nothing downloaded")
    _report_differing(job, check)


def _report_differing(job: _Job, check: FolderCheck) -> None:
    if check.differing:
        job.say(f"{some_names(check.differing)} in {job.target} read cleanly but differ from the official "
                "files (your own copy?); left as they are: move them away and run again to get the official ones")


def _obtain_archive(job: _Job, staging: Path) -> tuple[Path, bool]:
    """A verified archive: the kept one when it still verifies, else a download. Returns (path, fetched)."""
    kept = _verified_kept_archive(job)
    if kept is not None:
        return kept, False
    return _download_archive(job, staging)


def _verified_kept_archive(job: _Job) -> Path | None:
    kept = job.kept_archive
    if not kept.is_file() or kept.is_symlink():
        return None
    try:
        actual = md5_of(kept)
    except OSError:
        return None
    if actual != job.md5:
        job.say(f"{kept} does not match md5 {job.md5} (got {actual}); left as it is")
        return None
    job.say(f"using {kept} (md5 verified)")
    return kept


def _download_archive(job: _Job, staging: Path) -> tuple[Path, bool]:
    archive = staging / "archive"
    actual_md5 = _fetch(job.url, archive, desc=job.name, progress=job.progress)
    if actual_md5 != job.md5:
        raise DataError(
            f"checksum mismatch for {job.url}: expected md5 {job.md5}, got {actual_md5}; nothing was written"
        )
    return archive, True


def _keep_archive(job: _Job, archive: Path) -> None:
    """Keep the verified archive for offline repairs, only under a free name (a hard link: exclusive)."""
    kept = job.kept_archive
    if os.path.lexists(kept):
        return
    try:
        os.link(archive, kept)
    except OSError:
        return  # no hard links here, or another file system: the archive is just not kept
    job.say(f"kept the archive as {kept} (it lets `lbgat data download` repair the folder offline)")


def _put_back(job: _Job, archive: Path, where: str, staging: Path, check: FolderCheck) -> list[str]:
    """Extract the broken files into ``staging``, set damaged ones aside, move the fresh ones in.

    Returns the names the damaged files were kept under.
    """
    folder = job.source.folder
    extracted = staging / "extracted"
    _extract(archive, extracted, where, members=[f"{folder}/{name}" for name in check.broken])
    for name in check.broken:
        fresh = extracted / folder / name
        if fresh.is_symlink() or not fresh.is_file():
            raise DataError(f"the archive from {where} has no file {folder}/{name}; nothing was changed")
    set_aside: list[str] = []
    try:
        for name in check.damaged:
            aside = _free_name(job.target / (name + DAMAGED_SUFFIX))
            os.rename(job.target / name, aside)  # kept, never deleted: lbgat did not necessarily write it
            set_aside.append(aside.name)
        for name in check.broken:
            destination = job.target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(extracted / folder / name, destination)
    except OSError as exc:
        raise DataError(f"{job.name}: cannot put the files back into {job.target}: {exc}") from exc
    return set_aside


def _free_name(path: Path) -> Path:
    candidate, number = path, 1
    while os.path.lexists(candidate):
        number += 1
        candidate = path.with_name(f"{path.name}-{number}")
    return candidate


def _archive_files(archive: Path, folder: str, where: str) -> list[str]:
    """The regular files under ``folder/`` in the archive, relative to that folder."""
    prefix = folder + "/"
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zip_file:
                names = [info.filename for info in zip_file.infolist() if not info.is_dir()]
        else:
            with tarfile.open(archive) as tar_file:
                names = [member.name for member in tar_file.getmembers() if member.isreg()]
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"the archive from {where} is damaged: {exc}; nothing was changed") from exc
    normalised = (posixpath.normpath(name) for name in names)
    return sorted(name[len(prefix):] for name in normalised if name.startswith(prefix))


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


def _extract(archive: Path, destination: Path, url: str, members: Sequence[str] | None = None) -> None:
    """Extract a zip or tar archive (only ``members``, when given) after checking that every member
    stays inside ``destination``."""
    wanted = None if members is None else set(members)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zip_file:
                infos = [info for info in zip_file.infolist()
                         if wanted is None or posixpath.normpath(info.filename) in wanted]
                for info in infos:
                    _refuse_if(_path_problem(info.filename), info.filename, url)
                zip_file.extractall(destination, members=infos)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tar_file:
                chosen = [member for member in tar_file.getmembers()
                          if wanted is None or posixpath.normpath(member.name) in wanted]
                for member in chosen:
                    _refuse_if(_tar_member_problem(member), member.name, url)
                tar_file.extractall(destination, members=chosen, **_TAR_FILTER)
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
