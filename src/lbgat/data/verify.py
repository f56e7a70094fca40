"""Checking the files of a dataset folder: present, regular files, and intact where that is knowable.

A file is *damaged* when the reader cannot use it; a file that reads cleanly but differs from the
official checksum is only *differing* (a re-serialised copy of one's own, say) and is left alone.
Anything that is not a regular file where a file belongs (a folder, a dangling or damaged link, a
device) is *in the way*: lbgat never replaces what it cannot account for.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

_CHUNK_BYTES = 1 << 20
_SHOWN_NAMES = 3


@dataclass
class FolderCheck:
    """What :func:`check_files` found, by file name relative to the folder."""

    checked: int = 0
    missing: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    differing: list[str] = field(default_factory=list)
    in_the_way: list[tuple[str, str]] = field(default_factory=list)  # (name, what is there)
    matched_checksums: int = 0

    @property
    def broken(self) -> list[str]:
        """The files a repair must put in place."""
        return self.missing + self.damaged


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def check_files(
    folder: Path,
    names: Iterable[str],
    md5s: Mapping[str, str],
    problem_of: Callable[[Path], str | None] | None,
) -> FolderCheck:
    """Check ``folder/name`` for each name: against ``md5s`` where given, else (or on a mismatch)
    with ``problem_of``, which says why the reader cannot use a file (None: it reads cleanly)."""
    check = FolderCheck()
    for name in names:
        check.checked += 1
        path = folder / name
        if not os.path.lexists(path):
            check.missing.append(name)
            continue
        if path.is_symlink() and not path.exists():
            check.in_the_way.append((name, "a symbolic link to nothing"))
            continue
        if not path.is_file():
            check.in_the_way.append((name, "a folder" if path.is_dir() else "not a regular file"))
            continue
        expected = md5s.get(name)
        try:
            if expected is not None and md5_of(path) == expected:
                check.matched_checksums += 1
                continue
        except OSError as exc:
            check.in_the_way.append((name, f"an unreadable file ({exc.strerror or exc})"))
            continue
        if problem_of is not None and problem_of(path) is not None:
            if path.is_symlink():
                check.in_the_way.append((name, "a symbolic link to a damaged file"))
            else:
                check.damaged.append(name)
        elif expected is not None:
            check.differing.append(name)
    return check


def some_names(names: list[str]) -> str:
    """``a, b, c and 7 more``: a list short enough for a one-line message."""
    shown = ", ".join(names[:_SHOWN_NAMES])
    return shown + (f" and {len(names) - _SHOWN_NAMES} more" if len(names) > _SHOWN_NAMES else "")
