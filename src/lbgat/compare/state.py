"""``compare.json``: what a comparison has done, so that the same command run again reuses it.

For each run folder it records that the comparison started the run (so a run stopped before its first
checkpoint, whose files the comparison itself wrote, may be started afresh), and for its evaluation the
request, the sha256 of the checkpoint it measured and of the report.json it wrote: an evaluation is
reused only when all three still hold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..storage.files import strict_json, write_text_atomic

STATE_FILE = "compare.json"
FORMAT = 1


class CompareState:
    def __init__(self, path: Path, runs: dict[str, dict[str, Any]]) -> None:
        self.path = path
        self.runs = runs

    @classmethod
    def load(cls, out: Path) -> CompareState:
        path = out / STATE_FILE
        if not path.exists():
            return cls(path, {})
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(f"cannot read {path} (the record of an earlier comparison): {error}; move it away "
                              "to start over") from None
        if not isinstance(data, dict) or data.get("lbgat_compare") != FORMAT or not isinstance(data.get("runs"), dict):
            raise ConfigError(f"{path} is not a record of `lbgat compare`; choose another --out")
        return cls(path, data["runs"])

    def entry(self, folder: str) -> dict[str, Any]:
        return self.runs.setdefault(folder, {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, strict_json({"lbgat_compare": FORMAT, "runs": self.runs}, indent=2) + "\n")
