"""Output folders: lbgat replaces or removes only the files it can show it wrote there.

Names are not ownership: a user's ``report.md`` or a camera-ready ``figures/transfer.png`` looks exactly
like lbgat's. So each folder that ``lbgat report`` or ``lbgat eval`` writes into (``compare``'s
``OUT/report`` and ``eval-last`` included) holds a hidden record, ``.lbgat-manifest.json``: for each file
lbgat wrote there, the command that wrote it and the sha256 of its bytes. A file in the way of a write is
replaced, or removed, only when the record lists it for the same command with the bytes it holds now.
Anything else in the way (someone else's file, one edited since, a link, the outputs of an lbgat older
than the record) refuses the command before any work, and nothing is written.

The record is written atomically twice: before the outputs, listing both the old and the new sha256 of
each file, and after them, the new one only. A process killed anywhere in between therefore leaves every
file it wrote provably its own, and a rerun takes over its half-written outputs instead of refusing them.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .files import strict_json, write_bytes_atomic

MANIFEST = ".lbgat-manifest.json"
FORMAT = 1
MANIFEST_LIMIT = 16 << 20  # far above any real record; a larger file is not one


@dataclass
class Manifest:
    folder: Path
    entries: dict[str, dict[str, Any]]  # relative name -> {"by": command, "sha256": [hex digests]}
    found: bool  # the folder had a record (False: none yet, or outputs of an lbgat older than records)

    def owns(self, name: str, by: str) -> bool:
        """Whether ``name`` is a regular file that ``by`` wrote here, byte for byte as it is now."""
        entry = self.entries.get(name)
        if entry is None or entry.get("by") != by:
            return False
        digest = file_sha256(self.folder / name)
        return digest is not None and digest in entry.get("sha256", [])


def file_sha256(path: Path) -> str | None:
    """The sha256 of the regular file at ``path`` (None for a link, a folder, anything else, or nothing)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(descriptor, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            return None
        digest = hashlib.sha256()
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _not_a_record(path: Path, why: str) -> ConfigError:
    return ConfigError(f"{path} is not lbgat's record of the files it wrote ({why}); nothing was written: choose "
                       "a new --out, or move it away yourself")


def read_manifest(folder: Path) -> Manifest:
    """The record of ``folder`` (empty when it has none); one that is not lbgat's is refused."""
    path = folder / MANIFEST
    if not os.path.lexists(path):
        return Manifest(folder, {}, found=False)
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        raise _not_a_record(path, "a link" if path.is_symlink() else error.strerror or str(error)) from None
    with os.fdopen(descriptor, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise _not_a_record(path, "not a file")
        data = file.read(MANIFEST_LIMIT + 1)
    try:
        record = json.loads(data.decode("utf-8")) if len(data) <= MANIFEST_LIMIT else None
    except (UnicodeDecodeError, ValueError, RecursionError):
        record = None
    if not isinstance(record, dict) or record.get("lbgat_manifest") != FORMAT or not isinstance(
            record.get("files"), dict):
        raise _not_a_record(path, "unreadable, or of another format")
    entries = {name: entry for name, entry in record["files"].items() if _well_formed(name, entry)}
    return Manifest(folder, entries, found=True)


def _well_formed(name: str, entry: object) -> bool:
    # A name leading out of the folder (absolute, "..") is never anything lbgat wrote there.
    parts = Path(name).parts
    return (bool(parts) and not Path(name).is_absolute() and ".." not in parts and isinstance(entry, dict)
            and isinstance(entry.get("by"), str) and isinstance(entry.get("sha256"), list))


def not_owned(folder: Path, names: Iterable[str], by: str) -> list[str]:
    """Those of ``names`` that exist in ``folder`` (a link counts, even to nothing) but that ``by`` cannot
    show it wrote there."""
    manifest = read_manifest(folder)
    return [name for name in names if _linked_folder(folder, name)
            or (os.path.lexists(folder / name) and not manifest.owns(name, by))]


def refusal(folder: Path, names: list[str], what: str) -> ConfigError:
    """The one line refusing ``names`` in ``folder``, saying how to go on."""
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    them = "it" if len(names) == 1 else "them"
    why = (", which lbgat did not write there or which changed since it did" if (folder / MANIFEST).is_file() else
           f" with no record ({MANIFEST}) that lbgat wrote {them} (someone else's, or an lbgat's older than that "
           "record)")
    return ConfigError(f"the {what} {folder} holds {shown}{why}; nothing was written: choose a new --out, or move "
                       f"{them} away yourself (lbgat replaces only files it wrote)")


def check_owned(folder: Path, names: Iterable[str], by: str, what: str) -> None:
    """Refuse, before any work, when a file lbgat would write in ``folder`` is in the way and not ``by``'s."""
    if folder.is_dir():
        foreign = not_owned(folder, names, by)
        if foreign:
            raise refusal(folder, foreign, what)


def write_owned(folder: Path, by: str, files: dict[str, bytes], *, what: str, remove: Iterable[str] = ()) -> None:
    """Write ``files`` (names relative to ``folder``) and remove ``remove``, recording them as ``by``'s.

    Checked again here although every command checks first (the folder may have changed during the work):
    a file in the way that is not ``by``'s refuses the write, and nothing is written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(folder)
    stale = [name for name in remove if name not in files and os.path.lexists(folder / name)]
    foreign = [name for name in [*files, *stale] if _linked_folder(folder, name)
               or (os.path.lexists(folder / name) and not manifest.owns(name, by))]
    if foreign:
        raise refusal(folder, foreign, what)
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    during = dict(manifest.entries)
    for name, digest in digests.items():
        earlier = manifest.entries[name]["sha256"] if name in manifest.entries else []
        during[name] = {"by": by, "sha256": sorted({*earlier, digest})}
    _save(folder, during)
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(folder / name, data)
    for name in stale:
        (folder / name).unlink()
    after = {name: entry for name, entry in manifest.entries.items()
             if name not in digests and name not in stale and os.path.lexists(folder / name)}
    after.update({name: {"by": by, "sha256": [digest]} for name, digest in digests.items()})
    _save(folder, after)


def _linked_folder(folder: Path, name: str) -> bool:
    """Whether a folder between ``folder`` and its file ``name`` is a link (writing there would leave ``folder``)."""
    parent = folder
    for part in Path(name).parts[:-1]:
        parent = parent / part
        if parent.is_symlink() or (parent.exists() and not parent.is_dir()):
            return True
    return False


def owned_names(folder: Path, by: str) -> list[str]:
    """The files in ``folder`` that ``by`` wrote and that are still as it wrote them."""
    manifest = read_manifest(folder)
    return sorted(name for name in manifest.entries if manifest.owns(name, by))


def _save(folder: Path, entries: dict[str, dict[str, Any]]) -> None:
    record = {"lbgat_manifest": FORMAT,
              "about": "the files lbgat wrote in this folder, by command, with their sha256; lbgat replaces only "
                       "these", "files": dict(sorted(entries.items()))}
    write_bytes_atomic(folder / MANIFEST, (strict_json(record, indent=2) + "\n").encode("utf-8"))
