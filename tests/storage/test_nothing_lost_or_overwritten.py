"""Nothing lost, nothing overwritten: --fresh deletes only demo outputs, temporary files are
created safely, output folders are checked before any work, paths the system refuses and full disks
are one line, and every JSON file lbgat writes is strict JSON."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.cli_runs import run_cli
from helpers.folders import digests
from lbgat.cli import main
from lbgat.demo import ROWS
from lbgat.demo_files import clear_demo_outputs, quick_folder
from lbgat.storage.files import append_line, atomic_file, check_writable, strict_json, write_text_atomic

TRAIN = ["train", "--method", "trades", "--model", "tiny-cnn", "--batch-size", "8", "--no-progress"]
EVAL = ["--num-examples", "16", "--batch-size", "8", "--check-n", "0", "--no-progress"]
LONG_NAME = "a" * 300


def strict_loads(text: str) -> object:
    """json.loads that refuses NaN and infinities (as any strict JSON reader does)."""
    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0, result.stdout
    error = result.stderr.strip()
    assert "Traceback" not in error and len(error.splitlines()) == 1, error
    for fragment in fragments:
        assert fragment in error, error


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main([*TRAIN, "--max-steps", "1", "--out", str(run)]) == 0
    return run / "last.pt"


# ----------------------------------------------------------------------------- demo --fresh, --out .

def fake_demo_run(folder: Path) -> None:
    folder.mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "last.prev.pt", "split.json", "provenance.json"):
        (folder / name).write_text(name)
    (folder / "eval-last").mkdir()
    (folder / "eval-last" / "report.json").write_text("{}")


def test_demo_fresh_refuses_a_folder_holding_anything_it_did_not_write(tmp_path: Path) -> None:
    """`demo --quick --fresh --out d` on d-quick with a user's files deletes nothing."""
    folder = tmp_path / "d-quick"
    (folder / "thesis").mkdir(parents=True)
    (folder / "thesis" / "chapter1.tex").write_text("years of work")
    (folder / "precious.txt").write_text("x\n")
    fake_demo_run(folder / ROWS[0].folder)
    before = digests(folder)

    result = run_cli("demo", "--quick", "--fresh", "--out", str(tmp_path / "d"), "--no-progress")
    assert_one_line_error(result, "--fresh deletes only what the demo wrote", "precious.txt", "thesis",
                          "nothing was deleted")
    assert result.returncode == 2
    assert digests(folder) == before


def test_demo_fresh_never_deletes_through_a_link_or_a_stranger_in_a_run_folder(tmp_path: Path) -> None:
    """A symlink, or an unknown file inside a demo run folder, refuses --fresh."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    out = tmp_path / "demo"
    run = out / ROWS[0].folder
    fake_demo_run(run)
    (run / "eval-last" / "notes.md").write_text("mine")
    with pytest.raises(Exception, match="eval-last/notes.md"):
        clear_demo_outputs(out, [row.folder for row in ROWS])
    (run / "eval-last" / "notes.md").unlink()
    (out / ROWS[1].folder).symlink_to(outside, target_is_directory=True)
    with pytest.raises(Exception, match=ROWS[1].folder):
        clear_demo_outputs(out, [row.folder for row in ROWS])
    assert (outside / "keep.txt").read_text() == "keep"
    (out / ROWS[1].folder).unlink()

    (run / ".last.pt.k2j4x9q_.tmp").write_bytes(b"left by a killed write")  # lbgat's own temporary file
    (out / "summary.md").write_text("table")
    clear_demo_outputs(out, [row.folder for row in ROWS])
    assert list(out.iterdir()) == [] and (outside / "keep.txt").read_text() == "keep"


def test_quick_folder_stays_inside_a_folder_without_a_name() -> None:
    """Path('.').name is '', which with_name cannot take."""
    assert quick_folder(Path(".")) == Path("demo-quick")
    assert quick_folder(Path("/")) == Path("/demo-quick")
    assert quick_folder(Path("..")) == Path("../demo-quick")
    assert quick_folder(Path("runs/demo")) == Path("runs/demo-quick")


def test_demo_quick_into_the_current_folder_then_fresh_deletes_only_what_it_wrote(tmp_path: Path) -> None:
    """`demo --quick --out .` runs (it was a traceback); --fresh on the real demo
    outputs refuses while a stranger is among them and then removes exactly the demo's files (the
    report folder and compare.json included)."""
    (tmp_path / "precious.txt").write_text("x\n")
    result = run_cli("demo", "--quick", "--out", ".", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = tmp_path / "demo-quick"
    assert (runs / "summary.md").is_file()
    # The demo ends by writing the report and saying where report.html is; --fresh below
    # removes the report folder and compare.json as the demo's own.
    assert (runs / "report" / "report.html").is_file() and (runs / "report" / "figures" / "tradeoff.png").is_file()
    assert result.stdout.strip().splitlines()[-1].endswith(str(Path("demo-quick") / "report" / "report.html"))
    assert strict_loads((runs / "summary.json").read_text())["rows"]
    for row in ROWS:
        assert (runs / row.folder / "last.pt").is_file() and (runs / row.folder / "eval-last" / "report.json").is_file()
        for name in ("report.json", "per_sample.json"):
            strict_loads((runs / row.folder / "eval-last" / name).read_text())

    stranger = runs / ROWS[2].folder / "my-notes.txt"
    stranger.write_text("mine")
    before = digests(tmp_path)
    refused = run_cli("demo", "--quick", "--fresh", "--out", ".", "--no-progress", cwd=tmp_path)
    assert_one_line_error(refused, "my-notes.txt", "nothing was deleted")
    assert digests(tmp_path) == before

    stranger.unlink()
    clear_demo_outputs(runs, [row.folder for row in ROWS])  # what --fresh does before it trains again
    assert list(runs.iterdir()) == []
    assert (tmp_path / "precious.txt").read_text() == "x\n"


# ----------------------------------------------------------------------------- safe temporary files

def test_atomic_writes_never_follow_a_planted_link_and_leave_nothing_on_error(tmp_path: Path) -> None:
    """The temporary name is unpredictable and created exclusively; errors clean up."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    for name in (".report.json.tmp", ".report.json.0.tmp", ".report.json.tmp.tmp"):
        (out / name).symlink_to(victim)
    write_text_atomic(out / "report.json", "{}\n")
    assert victim.read_text() == "precious" and (out / "report.json").read_text() == "{}\n"

    with pytest.raises(RuntimeError), atomic_file(out / "half.bin") as file:
        file.write(b"partial")
        raise RuntimeError("the writer failed")
    assert not (out / "half.bin").exists()
    assert sorted(path.name for path in out.iterdir()) == [".report.json.0.tmp", ".report.json.tmp",
                                                            ".report.json.tmp.tmp", "report.json"]
    # A target that is itself a link: the link is replaced, the file it points to is untouched.
    (out / "linked.txt").symlink_to(victim)
    write_text_atomic(out / "linked.txt", "new")
    assert not (out / "linked.txt").is_symlink() and victim.read_text() == "precious"


def test_eval_and_train_never_write_through_a_link_at_a_temporary_name(checkpoint: Path, tmp_path: Path) -> None:
    """`ln -s victim o/.report.json.tmp; lbgat eval CKPT --out o` leaves the victim alone."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out, run = tmp_path / "o", tmp_path / "run"
    out.mkdir()
    run.mkdir()
    for name in ("report.json", "report.md", "per_sample.json"):
        (out / f".{name}.tmp").symlink_to(victim)
    for name in ("config.yaml", "provenance.json", "split.json", "last.pt", "metrics.jsonl"):
        (run / f".{name}.tmp").symlink_to(victim)

    evaluated = run_cli("eval", str(checkpoint), *EVAL, "--out", str(out))
    assert evaluated.returncode == 0, evaluated.stderr
    trained = run_cli(*TRAIN, "--max-steps", "1", "--out", str(run))
    assert trained.returncode == 0, trained.stderr
    assert victim.read_text() == "precious\n"
    for name in ("report.json", "per_sample.json"):
        strict_loads((out / name).read_text())
    assert (run / "last.pt").is_file() and not (run / "last.pt").is_symlink()


# ----------------------------------------------------------------------------- metrics.jsonl

def test_metrics_are_strict_json_after_skipped_non_finite_steps(tmp_path: Path) -> None:
    """metrics.jsonl once held bare NaN; now non-finite numbers are null."""
    run = tmp_path / "run"
    result = run_cli("train", "--method", "natural", "--model", "tiny-cnn", "--batch-size", "8", "--max-steps", "4",
                     "--set", "optim.lr=1.0e+30", "--set", "log_every=1", "--on-nan", "skip", "--no-progress",
                     "--out", str(run))
    assert result.returncode == 0, result.stderr
    records = [strict_loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    skipped = [record for record in records if record["event"] == "skipped_step"]
    assert skipped and skipped[0]["terms"]["loss"] is None
    for name in ("provenance.json", "split.json"):
        strict_loads((run / name).read_text())


def test_a_line_cut_short_by_a_kill_is_terminated_not_appended_to(tmp_path: Path) -> None:
    """A resumed run's first record goes on its own line after an unfinished one."""
    run = tmp_path / "run"
    assert main([*TRAIN, "--max-steps", "1", "--out", str(run)]) == 0
    metrics = run / "metrics.jsonl"
    with open(metrics, "a") as file:
        file.write('{"event": "epoch", "tra')  # a write cut short by SIGKILL
    before = metrics.read_text()
    assert main([*TRAIN, "--max-steps", "2", "--out", str(run), "--resume"]) == 0
    text = metrics.read_text()
    assert text.startswith(before + "\n")  # nothing overwritten
    lines = text.splitlines()
    assert lines[before.count("\n")] == '{"event": "epoch", "tra'
    valid = [line for line in lines if line != '{"event": "epoch", "tra']
    assert [strict_loads(line)["event"] for line in valid][-2:] == ["resumed", "stopped"]


def test_append_line_refuses_a_link_and_strict_json_writes_null() -> None:
    assert strict_json({"a": [float("nan"), float("inf"), 1.5], "b": (float("-inf"),)}) == \
        '{"a": [null, null, 1.5], "b": [null]}'


def test_append_line_never_follows_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "metrics.jsonl").symlink_to(victim)
    with pytest.raises(OSError):
        append_line(tmp_path / "metrics.jsonl", "{}")
    assert victim.read_text() == "precious"


# ----------------------------------------------------------------------------- output folders checked first

def test_eval_out_that_cannot_be_a_folder_is_refused_before_any_work(checkpoint: Path, tmp_path: Path,
                                                                      monkeypatch, capsys) -> None:
    """An existing file as --out, or a folder under a file, fails before loading anything."""
    from lbgat.evaluate import runner

    def no_work(*args, **kwargs):
        raise AssertionError("the evaluation started before --out was checked")

    monkeypatch.setattr(runner, "_load_models", no_work)
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    for out in (blocker, blocker / "eval"):
        assert main(["eval", str(checkpoint), *EVAL, "--out", str(out)]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and "cannot write to the report folder" in error, error
        assert "is not a directory" in error
    assert blocker.read_text() == "mine"


def _read_only_mount_works() -> bool:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o ro,size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


def in_read_only_folder(folder: Path, *command: str, prepare: str = "") -> subprocess.CompletedProcess:
    """Run ``command`` in a private mount namespace where ``folder`` is a read-only tmpfs (root ignores
    permission bits, but not a read-only file system). ``prepare`` runs while it is still writable."""
    script = (f'mount -t tmpfs -o size=8m tmpfs "{folder}" && {prepare or "true"} && '
              f'mount -o remount,ro "{folder}" && exec "$@"')
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *command], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"), timeout=300)


@pytest.mark.skipif(not _read_only_mount_works(), reason="needs `unshare -m` and mount (root in a container)")
def test_eval_into_a_read_only_folder_is_refused_before_any_work(checkpoint: Path, tmp_path: Path) -> None:
    """A read-only --out, and the default eval-<stem> beside a checkpoint in a read-only
    folder, are one line before the evaluation runs (before: a traceback after the whole evaluation)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    explicit = in_read_only_folder(folder, sys.executable, "-m", "lbgat", "eval", str(checkpoint), *EVAL,
                                   "--out", str(folder / "eval"))
    assert_one_line_error(explicit, f"cannot write to the report folder {folder / 'eval'}", "Read-only file system")
    beside = in_read_only_folder(folder, sys.executable, "-m", "lbgat", "eval", str(folder / "last.pt"), *EVAL,
                                 prepare=f'cp "{checkpoint}" "{folder}/last.pt"')
    assert_one_line_error(beside, f"cannot write to the report folder {folder / 'eval-last'}",
                          "Read-only file system")


# ----------------------------------------------------------------------------- paths the system refuses

@pytest.mark.parametrize("case", ["train-out", "eval-out", "checkpoint", "data-root"])
def test_a_path_too_long_is_one_line(case: str, checkpoint: Path, tmp_path: Path) -> None:
    """ENAMETOOLONG from a 300-character name was an OSError traceback."""
    long = tmp_path / LONG_NAME
    args = {
        "train-out": [*TRAIN, "--max-steps", "1", "--out", str(tmp_path / "runs" / LONG_NAME)],
        "eval-out": ["eval", str(checkpoint), *EVAL, "--out", str(long)],
        "checkpoint": ["eval", str(long / "last.pt"), *EVAL, "--out", str(tmp_path / "eval")],
        "data-root": ["data", "info", "cifar10", "--root", str(long)],
    }[case]
    result = run_cli(*args)
    assert_one_line_error(result, "File name too long")
    assert result.returncode == 2
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_an_empty_out_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    """`--out ""` once silently used the default folder (or, in eval, the current one)."""
    monkeypatch.chdir(tmp_path)  # where a default folder would appear
    for command in ([*TRAIN, "--max-steps", "1"], ["eval", str(tmp_path / "x.pt")], ["demo", "--quick"]):
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--out", ""])
        assert exit_.value.code == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and "an empty string is not a folder name" in error
    assert main([*TRAIN, "--max-steps", "1", "--set", "out=''"]) == 2  # the same from --set or a recipe
    assert "out must name a folder, not an empty string" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_os_error_without_a_path_is_still_a_traceback(monkeypatch) -> None:
    """Only errors about a path the system refused become one line; anything else is a bug to see."""
    from lbgat import cli

    def broken(args):
        raise OSError("no file involved")

    monkeypatch.setattr(cli, "_run_recipes", broken)
    with pytest.raises(OSError, match="no file involved"):
        main(["recipes"])


def test_check_writable_reports_a_name_too_long_under_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="File name too long"):
        check_writable(tmp_path / "missing" / LONG_NAME, "run directory")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- a disk that fills up

def test_a_checkpoint_that_cannot_be_written_stops_with_one_line_and_resumes(tmp_path: Path, monkeypatch,
                                                                             capsys) -> None:
    """ENOSPC at a later checkpoint was a traceback; now one line says the previous
    checkpoint is intact, no partial file is left, and --resume continues from it."""
    from lbgat.checkpoints import checkpoint as checkpoint_module

    run = tmp_path / "run"
    real_save = torch.save
    saves = []

    class FillingDisk:
        """A file on a disk that is full after its first 100 kB (what torch.save then sees)."""

        def __init__(self, file) -> None:
            self.file, self.written = file, 0

        def write(self, data) -> int:
            if self.written + len(data) > 100_000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.written += len(data)
            return self.file.write(data)

        def flush(self) -> None:
            self.file.flush()

    def disk_fills_at_the_third_save(payload, file, *args, **kwargs):
        saves.append(file)
        return real_save(payload, FillingDisk(file) if len(saves) == 3 else file, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_fills_at_the_third_save)
    common = [*TRAIN, "--checkpoint-every", "2", "--out", str(run)]
    assert main([*common, "--max-steps", "6"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert f"could not write the checkpoint {run / 'last.pt'}: No space left on device" in error
    assert f"the previous checkpoint {run / 'last.pt'} is intact" in error and f"--resume --out {run}" in error
    assert {path.name for path in run.iterdir()} == {"config.yaml", "last.pt", "last.prev.pt", "metrics.jsonl",
                                                     "provenance.json", "split.json"}
    from lbgat.checkpoints.checkpoint import load_checkpoint
    assert load_checkpoint(run / "last.pt").meta["position"]["global_step"] == 4
    assert load_checkpoint(run / "last.prev.pt").meta["position"]["global_step"] == 2

    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2])  # and even then the run goes on from last.prev.pt
    assert main([*common, "--max-steps", "6", "--resume"]) == 0
    assert load_checkpoint(run / "last.pt").meta["position"]["global_step"] == 6


def _tmpfs_works(folder: Path) -> bool:
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2.4 MB tmpfs (room for one tiny-cnn checkpoint and a half): needs root and mount."""
    folder = tmp_path / "f"
    folder.mkdir()
    if shutil.which("mount") is None or not _tmpfs_works(folder):
        pytest.skip("needs to mount a tmpfs (root)")
    subprocess.run(["umount", str(folder)], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2400k", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_disk_that_fills_at_a_later_checkpoint_is_one_line(small_disk: Path) -> None:
    """On a real full file system: exit non-zero, one line, no temporary file left,
    and the run resumes once there is room."""
    run = small_disk / "run"
    common = [*TRAIN, "--checkpoint-every", "2", "--out", str(run)]
    result = run_cli(*common, "--max-steps", "6")
    assert_one_line_error(result, "could not write the checkpoint", "No space left on device",
                          "is intact", "--resume")
    assert not [path for path in run.iterdir() if path.name.endswith(".tmp")]
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    resumed = run_cli(*common, "--max-steps", "6", "--resume")
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.parametrize("present", ["config.yaml", "metrics.jsonl", "epoch-0001.pt"])
def test_a_new_run_never_overwrites_run_files_it_finds_without_a_checkpoint(present: str, tmp_path: Path) -> None:
    """A folder holding a run's files but no checkpoint (a run stopped before its first checkpoint, or
    the user's own files of those names) is refused by a new run: one line, every file as it was."""
    run = tmp_path / "run"
    run.mkdir()
    (run / present).write_bytes(b"the user's own file\n")
    (run / "notes.txt").write_text("kept\n")
    before = digests(run)
    result = run_cli(*TRAIN, "--max-steps", "1", "--out", str(run))
    assert_one_line_error(result, present, "no checkpoint to resume from")
    assert digests(run) == before
