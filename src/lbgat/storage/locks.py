"""One writer per folder: the lock that train, eval, compare, report and export hold on what they write.

A writer holds ``fcntl.flock`` on ``FOLDER/.lbgat.lock`` (with its pid written in it) while it writes. The
operating system releases a flock when its holder ends in any way (an exception, SIGKILL, a crash), so a lock
never outlives its process and there is nothing stale to clean up by hand. A second writer is refused at once,
in one line naming the holder's pid, instead of writing the same files at the same time.

flock belongs to an *open file description*: two opens of the same file in one process conflict like two
processes do. A process therefore opens each folder's lock once, and taking a lock it already holds (``lbgat
demo`` around the comparison it runs in the same folder) only counts. Folders inside one another are separate
locks: a comparison holds OUT while the training it runs holds OUT/<method> and its evaluation OUT/<method>/
eval-last.

On release the lock file is removed, and so are the folders that taking the lock created if they are still
empty: a finished command leaves its folder as it wrote it, a refused one leaves nothing. A lock file left by a
killed process is harmless (the next writer locks it). Since a holder removes the file, a process that opened
it just before may lock a file no longer in the folder; it checks that the name still leads to the file it
locked, and starts again if not.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, FolderBusyError

LOCK_FILE = ".lbgat.lock"
_ATTEMPTS = 100  # a releasing holder can remove the file (or its new folder) under us; this many tries is plenty


@dataclass
class _Held:
    descriptor: int
    count: int
    created: list[Path]  # folders taking the lock made, deepest first


_held: dict[str, _Held] = {}  # by the lock file's real path


@contextmanager
def folder_lock(folder: Path, what: str, *, enabled: bool = True, through_link: bool = True) -> Iterator[None]:
    """Hold the lock of ``folder`` (``what`` names it in messages, e.g. "run directory") for the block,
    creating the folder if it is missing. ``enabled=False`` holds nothing: the other processes of a torchrun
    job, which leave the writing to rank 0. ``through_link=False`` refuses a folder that is a symlink before
    anything is written through it."""
    if not enabled:
        yield
        return
    if (folder.is_symlink() and not through_link) or (folder.exists() and not folder.is_dir()):
        raise ConfigError(f"the {what} {folder} is not a folder" + (" (a link)" if folder.is_symlink() else ""))
    with _holding(folder, LOCK_FILE, f"the {what} {folder}"):
        yield


@contextmanager
def sibling_lock(target: Path, what: str) -> Iterator[None]:
    """Hold a lock on ``target`` kept beside it (``.NAME.lbgat.lock`` in its parent): for a folder that must
    appear whole, with nothing of lbgat's inside it before it is complete (an export)."""
    target = Path(os.path.abspath(target))  # "." and "out/.." have a name only once made absolute
    name = f".{target.name}{LOCK_FILE}"
    if len(os.fsencode(name)) > 255:  # a name near the file system's limit: a short, still unique, one
        name = f".{hashlib.sha256(os.fsencode(target.name)).hexdigest()[:32]}{LOCK_FILE}"
    with _holding(target.parent, name, f"the {what} {target}"):
        yield


@contextmanager
def _holding(folder: Path, name: str, shown: str) -> Iterator[None]:
    created = _missing_folders(folder)
    path = folder / name
    key = os.path.realpath(path) if folder.exists() else None
    held = _held.get(key) if key is not None else None
    if held is None:
        descriptor = _acquire(folder, path, shown, created)
        key = os.path.realpath(path)
        held = _held[key] = _Held(descriptor, 0, created)
    held.count += 1
    try:
        yield
    finally:
        held.count -= 1
        if held.count == 0:
            del _held[key]
            _release(path, held)


def _missing_folders(folder: Path) -> list[Path]:
    missing: list[Path] = []
    current = folder.absolute()
    while not os.path.lexists(current) and current != current.parent:
        missing.append(current)
        current = current.parent
    return missing


def _acquire(folder: Path, path: Path, shown: str, created: list[Path]) -> int:
    for _ in range(_ATTEMPTS):
        folder.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:  # a holder releasing just now removed the folder it had created
            continue
        except OSError:
            _remove_empty(created)
            if path.is_symlink():
                raise ConfigError(f"{path} is a link; lbgat's lock file never is one (remove it)") from None
            raise
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _recorded_pid(descriptor)  # closes it
            _remove_empty(created)
            holder = f"pid {pid}" if pid is not None else "its pid not yet recorded"
            raise FolderBusyError(f"another lbgat process ({holder}) is writing {shown}; nothing was written: wait "
                                  "until it ends, or choose another --out") from None
        if _same_file(path, descriptor):
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
            return descriptor
        os.close(descriptor)  # locked a file its holder had removed: the folder's lock is a new file now
    raise FolderBusyError(f"could not take the lock of {shown}: its lock file kept changing; try again")


def _same_file(path: Path, descriptor: int) -> bool:
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _recorded_pid(descriptor: int) -> int | None:
    try:
        text = os.pread(descriptor, 32, 0).decode("ascii", errors="replace").strip()
    finally:
        os.close(descriptor)
    return int(text) if text.isdigit() else None


def _release(path: Path, held: _Held) -> None:
    # Removed while still locked, so no other process can have locked (and be using) this very file.
    if _same_file(path, held.descriptor):
        try:
            path.unlink()
        except OSError:
            pass
    os.close(held.descriptor)
    _remove_empty(held.created)


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first; the first that holds anything stops it
        try:
            folder.rmdir()
        except OSError:
            return
