"""Where an export is written before it becomes ``--out``: a hidden sibling folder, renamed when complete.

The sibling, ``.OUT.<random>.lbgat-export`` beside ``--out``, is created with ``mkdtemp`` (exclusively,
under an unpredictable name, so never a folder or link someone else put there) and holds
:data:`lbgat.checkpoints.export_folder.UNFINISHED`, with the writer's pid, until every file is in it. Then a single
``rename`` makes it ``--out``: readers see the whole export or none. An export killed part way leaves only
that sibling; the next export to the same ``--out`` removes it once its writer is gone (it is recognised by
its marker and holds nothing but an export's files). Anything else beside ``--out`` is never touched.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from pathlib import Path

from ..checkpoints.export_folder import CARD, CONFIG, FILES, UNFINISHED, WEIGHTS
from ..errors import ConfigError
from ..storage.files import sync_folder, write_bytes_atomic

SUFFIX = ".lbgat-export"
NAME_PART = 64  # characters of --out's name in the sibling's, so a long name still leaves room for the rest
TEMPORARY = re.compile(r"\..+\.[a-z0-9_]+\.tmp")  # left inside by a killed atomic write


def _absolute(out: Path) -> Path:
    return Path(os.path.abspath(out))  # "." and ".." get a name and a parent; links are not followed


def staging_folder(out: Path) -> Path:
    """A new, empty, marked sibling folder of ``out`` to write the export into."""
    target = _absolute(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name[:NAME_PART]}.", suffix=SUFFIX, dir=target.parent))
    write_bytes_atomic(folder / UNFINISHED, json.dumps({"lbgat_export_unfinished": 1, "pid": os.getpid()}).encode())
    return folder


def publish(staging: Path, out: Path) -> None:
    """Rename the complete ``staging`` folder to ``out`` (missing, or an empty folder, whose mode it keeps)."""
    target = _absolute(out)
    mask = os.umask(0)
    os.umask(mask)
    mode = target.stat().st_mode & 0o7777 if target.is_dir() and not target.is_symlink() else 0o777 & ~mask
    os.chmod(staging, mode)  # mkdtemp made it private
    (staging / UNFINISHED).unlink()
    try:
        if _current_folder(target):
            _move_files(staging, target)
        else:
            os.rename(staging, target)  # replaces an empty folder, never a file, a link or a folder with contents
    except OSError as error:
        if error.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise ConfigError(f"--out {out} was created or filled by something else while the export ran; "
                              "nothing was written there (choose a new or empty folder)") from None
        raise
    sync_folder(target.parent)


def _current_folder(target: Path) -> bool:
    try:
        return target.is_dir() and os.path.samefile(target, os.getcwd())
    except OSError:
        return False


def _move_files(staging: Path, target: Path) -> None:
    """Into the current folder (``--out .``), which a rename would replace under the user's shell: file by
    file, the weights last, so that before them the folder is no export at all; ``link`` never replaces a
    file that appeared meanwhile."""
    for name in (CONFIG, CARD, WEIGHTS):
        os.link(staging / name, target / name)
        (staging / name).unlink()
    staging.rmdir()


def remove_leftovers(out: Path) -> None:
    """Remove the siblings of ``out`` that killed exports left (and only those: see the module's text)."""
    target = _absolute(out)
    if not target.parent.is_dir():
        return
    prefix = f".{target.name[:NAME_PART]}."
    for sibling in target.parent.iterdir():
        if sibling.name.startswith(prefix) and sibling.name.endswith(SUFFIX) and _abandoned(sibling):
            for entry in sibling.iterdir():
                entry.unlink()
            sibling.rmdir()


def _abandoned(folder: Path) -> bool:
    """Whether ``folder`` is an export's sibling whose writer is gone, holding nothing but an export's files."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    marker = folder / UNFINISHED
    try:
        if marker.is_symlink() or not marker.is_file():
            return False
        record = json.loads(marker.read_text(encoding="utf-8"))
        entries = list(folder.iterdir())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    if not (isinstance(record, dict) and record.get("lbgat_export_unfinished") == 1
            and type(record.get("pid")) is int and record["pid"] > 0):
        return False
    ours = all(entry.is_file() and not entry.is_symlink()
               and (entry.name in (*FILES, UNFINISHED) or TEMPORARY.fullmatch(entry.name)) for entry in entries)
    return ours and not _running(record["pid"])


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is exporting anew; a folder it left earlier is finished with
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's live process (or a pid that cannot be asked about): left alone
    return True

