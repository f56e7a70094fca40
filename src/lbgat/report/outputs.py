"""The report folder: what it holds, and writing into it without touching anything else.

``--out`` may be a new folder, an empty one, or an earlier report: every file in it must be one that
``lbgat report`` wrote and that is still as it wrote it (its record, :mod:`lbgat.storage.ownership`), apart from
lbgat's own temporary files, which are left alone. Anything else refuses the whole report before any work;
a figure an earlier report wrote and this one does not is removed, so the folder always matches its report.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ConfigError
from ..storage.files import check_writable
from ..storage.locks import LOCK_FILE
from ..storage.ownership import MANIFEST, not_owned, owned_names, read_manifest, refusal, write_owned

REPORT_FILES = ("report.md", "report.html", "report.json")
FIGURES = "figures"
FIGURE_PATTERN = r"[a-z0-9][a-z0-9.-]*\.(png|svg)"  # the names build.py gives figures (id + extension)
TEMPORARY = re.compile(r"\..+\.[a-z0-9_]+\.tmp")  # left by a killed atomic write
WRITER = "lbgat report"  # the command named in the folder's record
WHAT = "report folder"


def _temporary(entry: Path) -> bool:
    return bool(TEMPORARY.fullmatch(entry.name)) and entry.is_file() and not entry.is_symlink()


def _entries(out: Path) -> list[str]:
    """Every name in ``out`` a report must answer for (figures/ looked into unless it is a link)."""
    names: list[str] = []
    for entry in sorted(out.iterdir()):
        if entry.name in (MANIFEST, LOCK_FILE) or _temporary(entry):  # lbgat's own bookkeeping
            continue
        if entry.name == FIGURES and entry.is_dir() and not entry.is_symlink():
            names += [f"{FIGURES}/{item.name}" for item in sorted(entry.iterdir())
                      if not _temporary(item)]
        else:
            names.append(entry.name)
    return names


def prepare_out(out: Path) -> None:
    """Check ``out`` before any work (writing nothing): writable, and holding nothing but an earlier report."""
    check_writable(out, WHAT)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"the report folder {out} is not a folder")
    if out.exists():
        read_manifest(out)  # a record that is not lbgat's refuses the folder
        foreign = not_owned(out, _entries(out), WRITER)
        if foreign:
            raise refusal(out, foreign, WHAT)


def write_figure_files(out: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (names under figures/) and remove the figures of an earlier report not among them."""
    named = {f"{FIGURES}/{name}": data for name, data in files.items()}
    earlier = [name for name in owned_names(out, WRITER) if name.startswith(f"{FIGURES}/")] if out.is_dir() else []
    write_owned(out, WRITER, named, what=WHAT, remove=earlier)


def write_report_files(out: Path, files: dict[str, str]) -> None:
    """Write report.md, report.html and report.json (each replacing only the earlier report's own)."""
    write_owned(out, WRITER, {name: text.encode("utf-8") for name, text in files.items()}, what=WHAT)
