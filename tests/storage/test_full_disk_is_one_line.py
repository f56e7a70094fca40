"""A full disk. `lbgat report` (leaving only figures/tradeoff.png), `lbgat eval` (two chained
tracebacks) and `lbgat export` ended in an ENOSPC traceback; now each is one line saying what could not be
written and what is intact, as training's checkpoints already did.

The disk fills the way a real one does: a write fails with ENOSPC and an error that names no file, and closing
the file repeats it (its buffer still cannot be flushed), so Python chains a second error to the first.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import lbgat.storage.files
from lbgat.cli import main
from lbgat.storage.locks import LOCK_FILE
from lbgat.storage.ownership import MANIFEST

TRAIN = ["train", "--method", "trades", "--model", "tiny-cnn", "--batch-size", "8", "--no-progress"]
EVAL = ["--num-examples", "16", "--batch-size", "8", "--check-n", "0", "--no-progress"]
NO_SPACE = os.strerror(errno.ENOSPC)


class FullFile:
    """A file on a full disk: every write fails, and so does closing it after a failed write."""

    def __init__(self, file: Any, code: int = errno.ENOSPC) -> None:
        self.file, self.failed, self.code = file, False, code

    def write(self, data: bytes) -> int:
        self.failed = True
        raise OSError(self.code, os.strerror(self.code))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)

    def __enter__(self) -> FullFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()
        if self.failed:
            raise OSError(self.code, os.strerror(self.code))


def fill_disk_after(monkeypatch: pytest.MonkeyPatch, files: int, code: int = errno.ENOSPC) -> list[Any]:
    """From now on, the disk has room for ``files`` more files written by lbgat, then none (or, with another
    ``code``, writes fail for that reason)."""
    real_fdopen = os.fdopen
    opened: list[Any] = []

    def fdopen(descriptor: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        file = real_fdopen(descriptor, mode, *args, **kwargs)
        if not set(mode) & set("wa+"):
            return file
        opened.append(file)
        return file if len(opened) <= files else FullFile(file, code)

    monkeypatch.setattr(lbgat.storage.files.os, "fdopen", fdopen)
    return opened


def digests(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def one_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("disk") / "run"
    assert main([*TRAIN, "--max-steps", "1", "--out", str(out)]) == 0
    assert main(["eval", str(out / "last.pt"), *EVAL, "--out", str(out / "eval-last")]) == 0
    return out


def test_the_simulated_disk_fails_as_a_real_one_does(tmp_path: Path, monkeypatch) -> None:
    """Without lbgat's handling, the fake disk gives the issue's two chained errors, the outer naming no file."""
    fill_disk_after(monkeypatch, 0)
    with pytest.raises(OSError) as raised, os.fdopen(os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT), "wb") as file:
        file.write(b"data")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename is None
    assert isinstance(raised.value.__context__, OSError)


@pytest.mark.parametrize(("room", "intact"), [
    (0, "nothing of this evaluation was saved (an earlier report in {out} is as it was); the checkpoint is "
        "unchanged: free some space, then run the evaluation again"),
    (2, "{out} holds this evaluation's report.json but not its report.md, per_sample.json; the checkpoint is "
        "unchanged"),
])
def test_eval_on_a_full_disk_is_one_line_saying_what_is_saved(run: Path, tmp_path: Path, monkeypatch, capsys,
                                                              room: int, intact: str) -> None:
    out = tmp_path / "eval"
    before = digests(run)
    fill_disk_after(monkeypatch, room)
    assert main(["eval", str(run / "last.pt"), *EVAL, "--out", str(out)]) == 2
    # The folder's record of what lbgat wrote (lbgat.storage.ownership) is written first, then the three files.
    failed = MANIFEST if room == 0 else "report.md"
    line = one_line(capsys)
    assert line.startswith(f"lbgat eval: error: could not write {out / failed}: {NO_SPACE}; "
                           + intact.format(out=out)), line
    assert digests(run) == before
    # No temporary file; a folder the evaluation created and could write nothing into is removed again.
    assert sorted(path.name for path in out.iterdir()) == [MANIFEST, "report.json"] if room else not out.exists()


def test_eval_whose_autoattack_state_cannot_be_saved_is_one_line(run: Path, tmp_path: Path, monkeypatch,
                                                                 capsys) -> None:
    """A write into the report folder other than the report (AutoAttack's resumable state) is one line too."""
    out = tmp_path / "eval"
    fill_disk_after(monkeypatch, 0)
    assert main(["eval", str(run / "last.pt"), *EVAL, "--attacks", "clean,aa", "--aa-version", "custom",
                 "--aa-attacks", "apgd-ce", "--out", str(out)]) == 2
    line = one_line(capsys)
    assert line.startswith(f"lbgat eval: error: could not write {out}") and NO_SPACE in line, line
    assert line.endswith("the checkpoint is unchanged, and this evaluation's results were not saved: free some "
                         "space, then run the evaluation again")


def test_report_on_a_full_disk_is_one_line(run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """The issue's case: room for figures/tradeoff.png and nothing more."""
    out = tmp_path / "rep"
    before = digests(run)
    fill_disk_after(monkeypatch, 1)
    assert main(["report", str(run), "--out", str(out)]) == 2
    line = one_line(capsys)
    assert line.startswith(f"lbgat report: error: could not write {out / 'figures'}/") and NO_SPACE in line, line
    assert line.endswith(f"the runs and evaluations it reads are unchanged, but the report in {out} is incomplete: "
                         "free some space, then run the same command again")
    assert digests(run) == before
    monkeypatch.undo()  # the disk has room again: the same command completes the report
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert (out / "report.html").is_file()


def test_export_on_a_full_disk_is_one_line_and_leaves_nothing(run: Path, tmp_path: Path, monkeypatch,
                                                              capsys) -> None:
    out = tmp_path / "export"
    fill_disk_after(monkeypatch, 1)
    assert main(["export", str(run / "last.pt"), "--out", str(out)]) == 2
    line = one_line(capsys)
    # The export is written into a hidden sibling of --out and renamed when complete (lbgat.export.staging).
    assert line.startswith(f"lbgat export: error: could not write {tmp_path}/.export.") and NO_SPACE in line, line
    assert line.endswith(f"nothing was exported ({out} was not created or changed, and the partial export beside "
                         "it was removed again) and the checkpoint is unchanged: free some space, then export again")
    assert list(tmp_path.iterdir()) == []  # no export folder, no temporary file, no lock file


def test_other_write_errors_are_one_line_without_the_advice_to_free_space(run: Path, tmp_path: Path, monkeypatch,
                                                                           capsys) -> None:
    out = tmp_path / "eval"
    fill_disk_after(monkeypatch, 0, errno.EIO)
    assert main(["eval", str(run / "last.pt"), *EVAL, "--out", str(out)]) == 2
    assert one_line(capsys) == f"lbgat eval: error: cannot use {out / MANIFEST}: {os.strerror(errno.EIO)}"


def test_a_full_disk_under_any_write_names_the_file_in_one_error(tmp_path: Path, monkeypatch) -> None:
    """atomic_file and append_line: the error of a failed write names the file being written, and only once."""
    fill_disk_after(monkeypatch, 0)
    with pytest.raises(OSError) as raised:
        lbgat.storage.files.write_text_atomic(tmp_path / "report.json", "{}")
    assert raised.value.filename == str(tmp_path / "report.json")
    assert raised.value.__suppress_context__ and raised.value.__cause__ is None  # one error shown, not a chain
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError) as raised:
        lbgat.storage.files.append_line(tmp_path / "metrics.jsonl", "{}")
    assert raised.value.filename == str(tmp_path / "metrics.jsonl")


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 16 kB tmpfs: room for a lock file and a few small files, not for a figure or a model."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs",
                                                        str(folder)], capture_output=True).returncode != 0:
        pytest.skip("needs to mount a tmpfs (root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.parametrize("command", ["eval", "report", "export"])
def test_a_real_full_file_system_is_one_line_from_a_real_process(run: Path, tiny_disk: Path, command: str) -> None:
    out = tiny_disk / "out"
    argv = {"eval": ["eval", str(run / "last.pt"), *EVAL, "--attacks", "clean,pgd5", "--n", "200", "--out", str(out)],
            "report": ["report", str(run), "--out", str(out)],
            "export": ["export", str(run / "last.pt"), "--out", str(out)]}[command]
    before = digests(run)
    result = subprocess.run([sys.executable, "-m", "lbgat", *argv], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    written = tiny_disk if command == "export" else out  # an export is written beside --out, then renamed
    assert line.startswith(f"lbgat {command}: error: could not write {written}") and NO_SPACE in line, line
    assert digests(run) == before
    assert not [path for path in tiny_disk.rglob("*") if path.name.endswith((".tmp", LOCK_FILE))]
