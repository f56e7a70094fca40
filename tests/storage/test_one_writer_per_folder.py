"""One folder, one writer. Two `lbgat compare ... --out cc` at once both trained cc/natural;
now train, eval, compare, report, export and demo hold a lock on the folder they write (``.lbgat.lock``, an
flock the OS releases when the holder dies), and a second writer is refused in one line naming the holder's
pid, before anything is written.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lbgat.cli import main
from lbgat.compare.one_run import clear_unstarted_run
from lbgat.errors import ConfigError, FolderBusyError
from lbgat.report.outputs import prepare_out
from lbgat.storage.locks import LOCK_FILE, folder_lock, sibling_lock

TRAIN = ["train", "--method", "trades", "--model", "tiny-cnn", "--batch-size", "8", "--no-progress"]
EVAL = ["--num-examples", "16", "--batch-size", "8", "--check-n", "0", "--no-progress"]
RUN_FILES = {"config.yaml", "last.pt", "metrics.jsonl", "provenance.json", "split.json"}

# Another process holding a lock as lbgat's writers do (flock on the lock file, its pid in it; without importing
# lbgat, so that it starts in milliseconds): "in" FOLDER/.lbgat.lock, what every writer but export takes, or
# "beside" the folder, as export does. It says "held" once it holds the lock, then waits to be killed.
HOLDER = """
import fcntl, os, sys, time
folder, where = sys.argv[1], sys.argv[2]
if where == "in":
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, ".lbgat.lock")
else:
    path = os.path.join(os.path.dirname(folder), "." + os.path.basename(folder) + ".lbgat.lock")
descriptor = os.open(path, os.O_RDWR | os.O_CREAT)
fcntl.flock(descriptor, fcntl.LOCK_EX)
os.write(descriptor, f"{os.getpid()}\\n".encode())
print("held", flush=True)
time.sleep(300)
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A one-step run with its evaluation in eval-last (what report reads)."""
    out = tmp_path_factory.mktemp("locks") / "run"
    assert main([*TRAIN, "--max-steps", "1", "--out", str(out)]) == 0
    assert main(["eval", str(out / "last.pt"), *EVAL, "--out", str(out / "eval-last")]) == 0
    return out


@pytest.fixture
def hold() -> Iterator[Callable[[Path, str], subprocess.Popen]]:
    started: list[subprocess.Popen] = []

    def start(folder: Path, where: str = "in") -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), where], stdout=subprocess.PIPE,
                                   text=True)
        started.append(process)
        assert process.stdout is not None and process.stdout.readline().strip() == "held"
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def commands(run: Path, folder: Path) -> dict[str, tuple[str, list[str]]]:
    """Each writer aimed at ``folder``, and where its lock is."""
    return {
        "train": ("in", [*TRAIN, "--max-steps", "1", "--out", str(folder)]),
        "eval": ("in", ["eval", str(run / "last.pt"), *EVAL, "--out", str(folder)]),
        "report": ("in", ["report", str(run), "--out", str(folder)]),
        "compare": ("in", ["compare", "--methods", "natural", "--config", "cpu/mnist-5k-demo", "--max-steps", "1",
                           "--out", str(folder), "--no-progress"]),
        "demo": ("in", ["demo", "--quick", "--out", str(folder.parent / "demo"), "--no-progress"]),
        "export": ("beside", ["export", str(run / "last.pt"), "--out", str(folder)]),
    }


@pytest.mark.parametrize("command", ["train", "eval", "report", "compare", "demo", "export"])
def test_a_second_writer_is_refused_in_one_line_naming_the_holder(run: Path, tmp_path: Path, hold, capsys,
                                                                  command: str) -> None:
    folder = tmp_path / "busy"
    where, argv = commands(run, folder)[command]
    locked = folder.parent / "demo-quick" if command == "demo" else folder
    holder = hold(locked, where)
    before = sorted(path.name for path in tmp_path.rglob("*"))
    assert main(argv) == 2
    line = one_line(capsys)
    assert f"another lbgat process (pid {holder.pid}) is writing" in line and "nothing was written" in line, line
    assert sorted(path.name for path in tmp_path.rglob("*")) == before  # not a file more, none changed
    assert holder.poll() is None  # and the holder was not disturbed


def test_a_killed_holder_frees_the_lock_and_its_stale_file_is_nobodys_business(run: Path, tmp_path: Path, hold,
                                                                               capsys) -> None:
    """The OS releases a dead holder's lock; the lock file it leaves neither blocks the next writer nor makes a
    new run folder, a report folder or an export's parent "not empty"."""
    fresh, report, export = tmp_path / "fresh", tmp_path / "report", tmp_path / "export"
    for folder, where in ((fresh, "in"), (report, "in"), (export, "beside")):
        holder = hold(folder, where)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert {path.name for path in tmp_path.iterdir()} == {"fresh", "report", f".export{LOCK_FILE}"}
    assert [path.name for path in fresh.iterdir()] == [LOCK_FILE]  # stale, as a killed process leaves it

    assert main([*TRAIN, "--max-steps", "1", "--out", str(fresh)]) == 0
    assert main(["report", str(run), "--out", str(report)]) == 0
    assert main(["export", str(run / "last.pt"), "--out", str(export)]) == 0
    # Each writer removed its lock file when it ended: the folders hold what the commands wrote, nothing more.
    assert {path.name for path in fresh.iterdir()} == RUN_FILES
    assert LOCK_FILE not in {path.name for path in report.iterdir()}
    assert {path.name for path in tmp_path.iterdir()} == {"fresh", "report", "export"}
    # ... and a run resumed by the next writer after its holder died goes on as usual.
    holder = hold(fresh)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert main([*TRAIN, "--max-steps", "2", "--resume", "--out", str(fresh)]) == 0
    assert {path.name for path in fresh.iterdir()} == RUN_FILES | {"last.prev.pt"}


def test_another_open_of_the_lock_file_conflicts_and_the_pid_is_read_from_it(tmp_path: Path) -> None:
    """flock conflicts between two open file descriptions even in one process: what a second writer sees."""
    folder = tmp_path / "run"
    folder.mkdir()
    descriptor = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        os.write(descriptor, b"4242\n")
        with pytest.raises(FolderBusyError, match=rf"another lbgat process \(pid 4242\) is writing the run "
                                                  rf"directory {folder}; nothing was written"):
            with folder_lock(folder, "run directory"):
                pass
    finally:
        os.close(descriptor)
    with folder_lock(folder, "run directory"):  # released: free again
        assert (folder / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    assert list(folder.iterdir()) == []


def test_one_process_may_take_a_folder_it_holds_again(tmp_path: Path) -> None:
    """A comparison holds OUT and runs training and evaluation in the same process (the demo holds OUT around
    the comparison): taking a held lock again must not deadlock or refuse, and only the outermost release
    frees it. Folders the lock created are removed again if the command wrote nothing into them."""
    folder = tmp_path / "a" / "b"
    with folder_lock(folder, "comparison folder"):
        with folder_lock(folder, "demo folder"), folder_lock(folder / "natural", "run directory"):
            with folder_lock(folder / "natural", "run directory"):
                assert (folder / "natural" / LOCK_FILE).is_file()
        assert (folder / LOCK_FILE).is_file() and not (folder / "natural").exists()
    assert list(tmp_path.iterdir()) == []


def test_torchrun_ranks_other_than_0_take_no_lock(tmp_path: Path) -> None:
    with folder_lock(tmp_path / "run", "run directory", enabled=False):
        assert not (tmp_path / "run").exists()


def test_no_lock_is_taken_through_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "report").symlink_to(victim, target_is_directory=True)
    with pytest.raises(ConfigError, match="is not a folder"):
        with folder_lock(tmp_path / "report", "report folder", through_link=False):
            pass
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK_FILE).symlink_to(victim / "planted")
    with pytest.raises(ConfigError, match="lock file never is one"):
        with folder_lock(tmp_path / "out", "run directory"):
            pass
    assert list(victim.iterdir()) == []


def test_export_lock_beside_a_long_name_or_the_current_folder(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / ("x" * 250)
    with sibling_lock(target, "export folder"):
        (lock,) = [path for path in tmp_path.iterdir()]
        assert lock.name.endswith(LOCK_FILE) and len(lock.name) <= 255
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    with sibling_lock(Path("."), "export folder"):  # `lbgat export CKPT --out .`: beside it, not inside it
        assert (tmp_path / f".here{LOCK_FILE}").is_file() and list((tmp_path / "here").iterdir()) == []


def test_a_stale_lock_file_is_not_a_stranger_anywhere(tmp_path: Path) -> None:
    """The report folder's check of foreign files and compare's restart of a run stopped before its first
    checkpoint both know lbgat's lock file."""
    report = tmp_path / "report"
    report.mkdir()
    (report / LOCK_FILE).write_text("123\n")
    prepare_out(report)
    run = tmp_path / "natural"
    run.mkdir()
    for name in ("config.yaml", "metrics.jsonl", LOCK_FILE):
        (run / name).write_text(name)
    clear_unstarted_run(run, print)
    assert [path.name for path in run.iterdir()] == [LOCK_FILE]
    shutil.rmtree(run)
