"""Where the demo writes, and ``--fresh``: deleting only what an earlier demo wrote.

``--fresh`` looks at everything in the demo folder first. If every entry is something the demo
writes (its run folders with their run files and ``eval-last`` reports, ``summary.md``/``.json``,
``compare.json``, the ``report`` folder with its figures, the records of what lbgat wrote
(:mod:`lbgat.storage.ownership`), and lbgat's own temporary files), exactly
those files are deleted. Anything else (a file or folder of the user's, a symlink) refuses the whole
operation and nothing is deleted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .report.outputs import FIGURE_PATTERN, FIGURES, REPORT_FILES
from .storage.locks import LOCK_FILE
from .storage.ownership import MANIFEST


@dataclass(frozen=True)
class Layout:
    """The names a folder written by lbgat may hold."""

    files: str  # a regular expression for file names
    folders: dict[str, Layout] = field(default_factory=dict)

    def holds_file(self, name: str) -> bool:
        # A temporary file of lbgat's own (".NAME.<random>.tmp", left by a killed write) counts as its file, and so
        # does a lock file left by a killed writer.
        return bool(re.fullmatch(self.files, name) or re.fullmatch(rf"\.({self.files})(\.[a-z0-9_]+)?\.tmp", name)
                    or name == LOCK_FILE)


RECORD = re.escape(MANIFEST)  # lbgat.storage.ownership's record of the files an evaluation or a report wrote
REPORT = Layout(rf"report\.json|report\.md|per_sample\.json|aa_state(\.rank\d+-of-\d+)?\.pt|{RECORD}")
RUN = Layout(r"config\.yaml|provenance\.json|split\.json|metrics\.jsonl|last\.pt|last\.prev\.pt|best\.pt|"
             r"epoch-\d+\.pt", {"eval-last": REPORT})
SUMMARY_FILES = r"summary\.md|summary\.json|compare\.json"
# `lbgat report`'s folder (OUT/report): see lbgat.report.outputs.
REPORT_FOLDER = Layout("|".join([*map(re.escape, REPORT_FILES), RECORD]), {FIGURES: Layout(FIGURE_PATTERN)})
NAMELESS = ("", ".", "..")


def quick_folder(out: Path) -> Path:
    """Where ``--quick`` writes: beside ``out`` as OUT-quick, or inside it for a folder without a name
    of its own (``.``, ``..``, ``/``)."""
    if out.name in NAMELESS:
        return out / "demo-quick"
    return out.with_name(out.name + "-quick")


def clear_demo_outputs(out: Path, run_folders: Iterable[str]) -> None:
    """Delete the demo's earlier outputs in ``out``; refuse (deleting nothing) if it holds anything else."""
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise ConfigError(f"--fresh: {out} is not a folder the demo wrote; nothing was deleted")
    layout = Layout(SUMMARY_FILES, {"report": REPORT_FOLDER, **{name: RUN for name in run_folders}})
    files: list[Path] = []
    folders: list[Path] = []
    foreign: list[Path] = []
    _survey(out, layout, files, folders, foreign)
    files = [path for path in files if path != out / LOCK_FILE]  # the lock the demo holds while it clears
    if foreign:
        shown = ", ".join(str(path.relative_to(out)) for path in foreign[:3])
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise ConfigError(f"--fresh deletes only what the demo wrote, but {out} also holds {shown}{more}; nothing "
                          "was deleted (move those away, or choose another --out)")
    for path in files:
        path.unlink()
    for path in folders:  # deepest first
        path.rmdir()


def _survey(folder: Path, layout: Layout, files: list[Path], folders: list[Path], foreign: list[Path]) -> None:
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink():
            foreign.append(entry)  # never followed, never deleted
        elif entry.is_dir() and entry.name in layout.folders:
            _survey(entry, layout.folders[entry.name], files, folders, foreign)
            folders.append(entry)
        elif entry.is_file() and layout.holds_file(entry.name):
            files.append(entry)
        else:
            foreign.append(entry)
