"""Writing files without losing or overwriting anything lbgat did not create.

Every file lbgat writes whole (checkpoints, reports, run files, AutoAttack state, caches) goes
through :func:`atomic_file`: a temporary file created *exclusively* (``mkstemp``: ``O_CREAT|O_EXCL``,
an unpredictable name, so never through a planted symlink) in the target's own folder, flushed and
``fsync``ed, then renamed over the target with ``os.replace``; on any error the temporary file is
removed and the target is untouched. If the target itself is a symlink, ``os.replace`` replaces the
link, never the file it points to. ``metrics.jsonl`` is the one file that grows: :func:`append_line`.

JSON written by lbgat is strict (RFC 8259): :func:`strict_json` writes non-finite floats as ``null``.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ..errors import ConfigError, WriteError


@contextmanager
def atomic_file(path: Path, *, keep_previous: Path | None = None) -> Iterator[IO[bytes]]:
    """A binary file that becomes ``path`` only when the ``with`` block succeeds.

    With ``keep_previous``, an existing ``path`` is renamed to it just before the new file takes its
    place, so a failed write (a full disk) leaves both the old ``path`` and ``keep_previous`` as they were.
    """
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
            os.fchmod(file.fileno(), 0o666 & ~_current_umask())  # mkstemp creates 0600
        if keep_previous is not None and os.path.lexists(path):
            os.replace(path, keep_previous)
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename is None:
            # A failed write or flush (a full disk) names no file, and closing the file repeats it as a second,
            # chained error: one error, about the file being written, says it all.
            raise _about(error, path) from None
        raise
    _fsync_directory(path.parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_file(path) as file:
        file.write(data)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def append_line(path: Path, line: str) -> None:
    """Append one line to a log (created if missing, never through a symlink). A last line left
    unfinished by a killed process is terminated first, not overwritten: it stays in the file as one
    invalid line, which readers skip."""
    descriptor = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    try:
        with os.fdopen(descriptor, "r+b") as file:
            size = file.seek(0, os.SEEK_END)
            unfinished = size > 0 and os.pread(descriptor, 1, size - 1) != b"\n"
            file.write((b"\n" if unfinished else b"") + line.rstrip("\n").encode("utf-8") + b"\n")
    except OSError as error:
        if error.filename is None:
            raise _about(error, path) from None
        raise


def finite_or_none(value: Any) -> Any:
    """``value`` with every NaN or infinity (in nested dicts, lists and tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(item) for item in value]
    return value


def strict_json(value: Any, **options: Any) -> str:
    """``json.dumps`` that any JSON reader accepts: NaN and infinities become null."""
    return json.dumps(finite_or_none(value), allow_nan=False, **options)


def nearest_existing(path: Path) -> Path:
    """``path`` or its closest existing ancestor (absolute). Raises OSError for an unusable path
    (a name too long, a loop of links)."""
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def check_writable(folder: Path, what: str) -> None:
    """``folder`` can be created (if missing) and written to; checked before any work and without
    leaving anything behind (the probe goes into the nearest folder that exists)."""
    try:
        existing = nearest_existing(folder)
        if not existing.is_dir():
            raise ConfigError(f"cannot write to the {what} {folder}: {existing} is not a directory")
        with tempfile.TemporaryFile(dir=existing):
            pass
        # Names that only fail once created (too long, invalid on this file system) fail here instead.
        missing = folder.absolute().relative_to(existing)
        if missing.parts:
            limit = os.pathconf(existing, "PC_NAME_MAX")
            if any(len(os.fsencode(part)) > limit for part in missing.parts):
                raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), str(folder))
    except OSError as error:
        raise ConfigError(f"cannot write to the {what} {folder}: {error.strerror or error}") from None


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def sync_folder(directory: Path) -> None:
    """fsync ``directory`` (so a rename in it survives a crash), where the system allows it."""
    _fsync_directory(directory)


def describe_os_error(error: OSError) -> str:
    """One line for an OSError about a path: ``cannot use PATH: File name too long``."""
    names = " -> ".join(str(name) for name in (error.filename, error.filename2) if name is not None)
    return f"cannot use {names}: {error.strerror or error}"


def _about(error: OSError, path: Path) -> OSError:
    """``error`` naming the file it is about (an OSError of the same kind: OSError picks it by errno)."""
    return OSError(error.errno, error.strerror or str(error), str(path))


def out_of_space(error: OSError) -> bool:
    """A full disk or an exhausted quota: what freeing some space mends."""
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def failed_writes(folder: Path, consequence: str) -> Iterator[None]:
    """A full disk or quota while writing a file in ``folder`` becomes one line: the file, the reason and
    ``consequence``, which says what is intact and what to do. Other errors pass unchanged (an OSError that
    names its file is still one line at the command line, without the advice to free space)."""
    try:
        yield
    except OSError as error:
        if (not out_of_space(error) or not isinstance(error.filename, str | bytes)
                or not _inside(Path(os.fsdecode(error.filename)), folder)):
            raise
        raise WriteError(f"could not write {error.filename}: {error.strerror or error}; {consequence}") from None


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.absolute(), folder.absolute()
    return path == folder or folder in path.parents
