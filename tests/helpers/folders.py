"""A folder's contents by digest, to show that a command left it as it was."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def digests(folder: Path) -> dict[str, str]:
    """Every file and symlink under ``folder``, by content (links by where they point)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            found[str(path.relative_to(folder))] = "-> " + os.readlink(path)
        elif path.is_file():
            found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            found[str(path.relative_to(folder)) + "/"] = "dir"
    return found
