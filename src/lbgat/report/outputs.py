"""The report folder: what it holds, and writing into it without touching anything else.

``--out`` may be a new folder, an empty one, or an earlier report (only ``report.md``, ``report.html``,
``report.json`` and ``figures/*.png|svg``, plus lbgat's own temporary files). Anything else in it refuses
the whole report before any work; a figure an earlier report wrote and this one does not is removed, so
the folder always matches its report.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ConfigError
from ..files import check_writable, write_bytes_atomic
from ..locks import LOCK_FILE

REPORT_FILES = ("report.md", "report.html", "report.json")
FIGURES = "figures"
FIGURE_PATTERN = r"[a-z0-9][a-z0-9.-]*\.(png|svg)"  # the names build.py gives figures (id + extension)
FIGURE_FILE = re.compile(FIGURE_PATTERN)
TEMPORARY = re.compile(r"\..+\.[a-z0-9_]+\.tmp")  # left by a killed atomic write


def _foreign(out: Path) -> list[str]:
    foreign: list[str] = []
    for entry in sorted(out.iterdir()):
        if entry.is_symlink():
            foreign.append(entry.name)
        elif entry.is_dir() and entry.name == FIGURES:
            foreign += [f"{FIGURES}/{item.name}" for item in sorted(entry.iterdir())
                        if item.is_symlink() or not item.is_file()
                        or not (FIGURE_FILE.fullmatch(item.name) or TEMPORARY.fullmatch(item.name))]
        elif not (entry.is_file() and (entry.name in (*REPORT_FILES, LOCK_FILE) or TEMPORARY.fullmatch(entry.name))):
            foreign.append(entry.name)
    return foreign


def prepare_out(out: Path) -> None:
    """Check ``out`` before any work: writable, and holding nothing but an earlier report."""
    check_writable(out, "report folder")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"the report folder {out} is not a folder")
    if out.exists():
        foreign = _foreign(out)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise ConfigError(f"the report folder {out} holds {shown}, which a report does not write; nothing was "
                              "written (choose an empty or new --out)")
    (out / FIGURES).mkdir(parents=True, exist_ok=True)


def write_figure_files(out: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (names under figures/) and remove the figures of an earlier report not among them."""
    folder = out / FIGURES
    for name, data in files.items():
        write_bytes_atomic(folder / name, data)
    for entry in folder.iterdir():
        if FIGURE_FILE.fullmatch(entry.name) and entry.name not in files and entry.is_file():
            entry.unlink()
