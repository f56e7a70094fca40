"""Output folders hold only what lbgat wrote: a report, an evaluation or a
comparison replaces only files its record shows it wrote; a comparison never follows a link out of --out; an
export appears whole or not at all; ``lbgat eval .`` inside an export writes beside it; an export's weights
file given alone says to give the folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import lbgat
from helpers.folders import digests
from lbgat.cli import main
from lbgat.errors import CheckpointError, ConfigError
from lbgat.evaluate.runner import default_out
from lbgat.report import build_report
from lbgat.storage.locks import LOCK_FILE
from lbgat.storage.ownership import MANIFEST, write_owned

TRAIN = ["train", "--method", "trades", "--model", "tiny-cnn", "--batch-size", "8", "--no-progress",
         "--set", "data.val_size=0", "--set", "attack.steps=2", "--max-steps", "1"]
EVAL = ["--attacks", "clean,fgsm", "--n", "8", "--check-n", "0", "--batch-size", "8", "--no-progress"]
COMPARE = ["compare", "--methods", "natural", "--config", "cpu/mnist-5k-demo", "--set", "data.train_size=64",
           "--set", "data.val_size=0", "--n", "8", "--check-n", "0", "--max-steps", "1", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run of one step, evaluated into its eval-last."""
    folder = tmp_path_factory.mktemp("ownership") / "run"
    assert main([*TRAIN, "--out", str(folder)]) == 0
    assert main(["eval", str(folder / "last.pt"), *EVAL]) == 0
    return folder


@pytest.fixture(scope="module")
def export(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("exported") / "export"
    assert main(["export", str(run), "--out", str(folder)]) == 0
    return folder


def one_line(capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    error = capsys.readouterr().err.strip()
    assert "Traceback" not in error and len(error.splitlines()) == 1, error
    for fragment in fragments:
        assert fragment in error, error
    return error


# ------------------------------------------------------------------------------------------- item 2: report


@pytest.mark.parametrize("planted", ["figures/transfer.png", "figures/curves-final.svg", "figures/tradeoff.png",
                                     "report.md", "report.json", "report.html"])
def test_a_report_never_replaces_a_file_named_like_its_own(planted: str, run: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """item 2: `lbgat report RUN --out paper` over a camera-ready figure or a user's report.md: one line, exit 2,
    nothing written or deleted."""
    out = tmp_path / "paper"
    (out / planted).parent.mkdir(parents=True, exist_ok=True)
    (out / planted).write_text("camera-ready")
    before = digests(out)
    assert main(["report", str(run), "--out", str(out)]) == 2
    one_line(capsys, planted, "no record", "nothing was written")
    assert digests(out) == before


def test_a_rerun_replaces_its_own_report_and_removes_only_its_own_stale_figures(run: Path, tmp_path: Path) -> None:
    """item 2: a second report over an earlier one replaces it, and removes a figure of the earlier one that it
    does not draw; a figure edited since is refused instead, and kept."""
    out = tmp_path / "rep"
    build_report([run], out)
    assert (out / "figures" / "tradeoff.png").is_file() and (out / MANIFEST).is_file()
    build_report([run], out)  # the same report again: every file is the earlier report's own
    bare = tmp_path / "bare"
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("eval-*"))
    build_report([bare], out)  # no evaluation: no trade-off figure, so the earlier one goes
    assert not (out / "figures" / "tradeoff.png").exists()

    build_report([run], out)
    (out / "figures" / "tradeoff.svg").write_text("<svg>edited by hand</svg>")
    before = digests(out)
    with pytest.raises(ConfigError, match="changed since"):
        build_report([bare], out)
    assert digests(out) == before


def test_a_report_of_an_older_lbgat_is_refused_with_a_way_on(run: Path, tmp_path: Path) -> None:
    """item 2: outputs written before records existed (no .lbgat-manifest.json) are never replaced or deleted:
    the refusal says to choose a new --out or to move them away."""
    out = tmp_path / "old"
    build_report([run], out)
    (out / MANIFEST).unlink()
    before = digests(out)
    with pytest.raises(ConfigError, match="choose a new --out, or move them away yourself"):
        build_report([run], out)
    assert digests(out) == before


def test_a_record_that_is_not_lbgats_is_refused(run: Path, tmp_path: Path) -> None:
    """item 2: a record cannot be planted to claim someone else's file: one naming a file that is not as recorded
    proves nothing, and a record that is not lbgat's (or a link) refuses the folder."""
    out = tmp_path / "rep"
    out.mkdir()
    (out / "report.md").write_text("mine")
    (out / MANIFEST).write_text(json.dumps({"lbgat_manifest": 1, "files": {
        "report.md": {"by": "lbgat report", "sha256": ["0" * 64]}}}))
    with pytest.raises(ConfigError, match="did not write there"):
        build_report([run], out)
    (out / MANIFEST).write_text("not json")
    with pytest.raises(ConfigError, match="not lbgat's record"):
        build_report([run], out)
    (out / MANIFEST).unlink()
    (out / MANIFEST).symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(ConfigError, match="not lbgat's record"):
        build_report([run], out)
    assert (out / "report.md").read_text() == "mine" and not (tmp_path / "elsewhere.json").exists()


def test_a_write_killed_between_its_files_is_taken_over_by_the_next(tmp_path: Path, monkeypatch) -> None:
    """item 2: the record lists the old and the new bytes of each file while they are written, so a process
    stopped part way leaves files the next run can still show are lbgat's."""
    import lbgat.storage.ownership as ownership

    folder = tmp_path / "out"
    write_owned(folder, "lbgat eval", {"a.json": b"1", "b.json": b"1"}, what="folder")
    real = ownership.write_bytes_atomic
    calls: list[Path] = []

    def stop_after_the_first_output(path: Path, data: bytes) -> None:
        if path.name != MANIFEST and calls:
            raise KeyboardInterrupt
        real(path, data)
        calls.extend([path] if path.name != MANIFEST else [])

    monkeypatch.setattr(ownership, "write_bytes_atomic", stop_after_the_first_output)
    with pytest.raises(KeyboardInterrupt):
        write_owned(folder, "lbgat eval", {"a.json": b"2", "b.json": b"2"}, what="folder")
    monkeypatch.setattr(ownership, "write_bytes_atomic", real)
    assert (folder / "a.json").read_bytes() == b"2" and (folder / "b.json").read_bytes() == b"1"
    write_owned(folder, "lbgat eval", {"a.json": b"3", "b.json": b"3"}, what="folder")
    record = json.loads((folder / MANIFEST).read_text())["files"]
    assert {name: len(entry["sha256"]) for name, entry in record.items()} == {"a.json": 1, "b.json": 1}


# --------------------------------------------------------------------------------------------- item 2: eval


@pytest.mark.parametrize("planted", ["report.md", "report.json", "per_sample.json"])
def test_eval_never_replaces_a_users_file_in_its_out(planted: str, run: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """item 2: `lbgat eval CKPT --out notes` with the user's report.md (or report.json, per_sample.json) there:
    one line before any work, the folder as it was."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / planted).write_text("my notes")
    (notes / "todo.txt").write_text("other files are not in the way")
    before = digests(notes)
    assert main(["eval", str(run / "last.pt"), "--out", str(notes), *EVAL]) == 2
    one_line(capsys, planted, "nothing was written")
    assert digests(notes) == before


def test_a_fifo_in_the_way_is_refused_without_being_opened(run: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """item 2: checking what is in the way never blocks on a FIFO (at a report's name or the record's)."""
    for name in ("report.md", MANIFEST):
        notes = tmp_path / name.strip(".")
        notes.mkdir()
        os.mkfifo(notes / name)
        assert main(["eval", str(run / "last.pt"), "--out", str(notes), *EVAL]) == 2
        one_line(capsys, name)


def test_eval_reruns_over_its_own_report_but_not_over_an_edited_one(run: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """item 2: its own earlier report is replaced; one edited since is the user's and refused."""
    out = tmp_path / "ev"
    assert main(["eval", str(run / "last.pt"), "--out", str(out), *EVAL]) == 0
    assert main(["eval", str(run / "last.pt"), "--out", str(out), *EVAL]) == 0
    (out / "report.md").write_text("my annotations")
    capsys.readouterr()
    assert main(["eval", str(run / "last.pt"), "--out", str(out), *EVAL]) == 2
    one_line(capsys, "report.md", "changed since")
    assert (out / "report.md").read_text() == "my annotations"


# ------------------------------------------------------------------------------------- items 2-3: compare


def test_compare_refuses_a_users_report_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """item 2: `lbgat compare ... --out proj` with the user's proj/report/report.md: one line before the first
    method trains."""
    out = tmp_path / "proj"
    (out / "report").mkdir(parents=True)
    (out / "report" / "report.md").write_text("draft")
    assert main([*COMPARE, "--out", str(out)]) == 2
    one_line(capsys, "report.md", "nothing was written")
    assert sorted(path.name for path in out.iterdir()) == ["report"]
    assert (out / "report" / "report.md").read_text() == "draft"


def test_compare_never_trains_a_run_outside_its_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """item 3, as reported: a real run of another comparison linked in as cx/natural is not trained further, its
    checkpoints and evaluation are untouched."""
    other = tmp_path / "other"
    assert main([*COMPARE, "--out", str(other)]) == 0
    (tmp_path / "cx").mkdir()
    (tmp_path / "cx" / "natural").symlink_to(other / "natural")
    before = digests(other)
    capsys.readouterr()
    assert main([*COMPARE, "--max-steps", "2", "--out", str(tmp_path / "cx")]) == 2
    one_line(capsys, "cx/natural is a symbolic link")
    assert digests(other) == before


def _link_cases(root: Path) -> dict[str, tuple[Path, Path]]:
    """Each place a comparison writes, as (the link, where it points)."""
    other = root / "other"
    return {
        "out": (root / "cx", other / "natural"),
        "run folder": (root / "cx" / "natural", other / "natural"),
        "seed folder": (root / "cx" / "natural" / "seed0", other / "natural"),
        "checkpoint": (root / "cx" / "natural" / "last.pt", other / "natural" / "last.pt"),
        "metrics": (root / "cx" / "natural" / "metrics.jsonl", other / "natural" / "metrics.jsonl"),
        "eval folder": (root / "cx" / "natural" / "eval-last", other / "natural" / "eval-last"),
        "eval report": (root / "cx" / "natural" / "eval-last" / "report.json",
                        other / "natural" / "eval-last" / "report.json"),
        "report folder": (root / "cx" / "report", other / "report"),
        "record": (root / "cx" / "compare.json", other / "compare.json"),
        "jobs folder": (root / "cx" / ".jobs", other / "natural"),  # --launcher slurm's job files and logs
    }


@pytest.mark.parametrize("case", list(_link_cases(Path("/"))))
def test_compare_never_follows_a_planted_link_out_of_its_out(case: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """item 3: `ln -s $PWD/other/natural cx/natural; lbgat compare --methods natural ... --out cx` (and a link
    at every other place a comparison writes or resumes): one line before any work, and the folder the link
    points to exactly as it was."""
    other = tmp_path / "other"
    for name in ("natural/last.pt", "natural/metrics.jsonl", "natural/eval-last/report.json", "report/report.md",
                 "compare.json"):
        (other / name).parent.mkdir(parents=True, exist_ok=True)
        (other / name).write_text(f"someone else's {name}")
    link, target = _link_cases(tmp_path)[case]
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    before = digests(other)
    seeds = ["--seeds", "0"] if case == "seed folder" else []
    assert main([*COMPARE, *seeds, "--out", str(tmp_path / "cx")]) == 2
    one_line(capsys, str(link), "symbolic link", "nothing was written")
    assert digests(other) == before


# ------------------------------------------------------------------------------------------ item 8: export


KILL_AFTER_FIRST_FILE = """
import os, signal, sys
import lbgat.export.writer as writer
real = writer.write_bytes_atomic
def write_then_die(path, data):
    real(path, data)
    os.kill(os.getpid(), signal.SIGKILL)
writer.write_bytes_atomic = write_then_die
from lbgat.cli import main
sys.exit(main(["export", sys.argv[1], "--out", sys.argv[2]]))
"""


def test_an_export_killed_part_way_leaves_no_export_and_the_rerun_works(run: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """item 8: SIGKILL after the weights are written: --out does not exist (no export without its card and
    config), the hidden folder left behind is refused by readers, and the same command again exports and
    removes that folder."""
    out = tmp_path / "exp"
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_FIRST_FILE, str(run / "last.pt"), str(out)],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists()
    # A killed writer's lock file stays beside --out (lbgat.storage.locks: harmless, the next export locks it again).
    left = [path for path in tmp_path.iterdir() if path != out and not path.name.endswith(LOCK_FILE)]
    assert len(left) == 1 and left[0].name.startswith(".exp.") and (left[0] / "model.safetensors").is_file()
    with pytest.raises(CheckpointError, match="never finished"):
        lbgat.load_model(left[0])

    assert main(["export", str(run), "--out", str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["README.md", "config.yaml", "model.safetensors"]
    assert [path.name for path in tmp_path.iterdir()] == ["exp"]
    lbgat.load_model(out)


def test_a_hidden_folder_that_is_not_a_dead_exports_is_left_alone(run: Path, tmp_path: Path) -> None:
    """item 8: only a folder marked by an export whose process is gone, holding only an export's files, is
    removed; one with another file, or whose writer still runs, stays."""
    marker = json.dumps({"lbgat_export_unfinished": 1, "pid": 1})  # pid 1 always runs
    running = tmp_path / ".exp.abcd1234.lbgat-export"
    running.mkdir()
    (running / ".lbgat-export-unfinished").write_text(marker)
    mine = tmp_path / ".exp.efgh5678.lbgat-export"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    before = digests(tmp_path)
    assert main(["export", str(run), "--out", str(tmp_path / "exp")]) == 0
    assert {name: value for name, value in digests(tmp_path).items() if not name.startswith("exp")} == before


def test_an_incomplete_export_is_refused_by_every_reader(export: Path, tmp_path: Path, run: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """item 8: what a killed export of an older lbgat left (the weights without README.md and config.yaml) is
    refused by load_model and `lbgat eval` in one line, and `lbgat export` over it says what it is."""
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(export / "model.safetensors", partial)
    with pytest.raises(CheckpointError, match="incomplete lbgat export: it has no README.md or config.yaml"):
        lbgat.load_model(partial)
    assert main(["eval", str(partial), *EVAL]) == 2
    one_line(capsys, "incomplete lbgat export")
    assert main(["export", str(run), "--out", str(partial)]) == 2
    one_line(capsys, "holds an incomplete export", "remove it yourself")
    assert sorted(path.name for path in partial.iterdir()) == ["model.safetensors"]


def test_an_export_into_an_empty_folder_keeps_its_mode(run: Path, tmp_path: Path) -> None:
    """item 8: --out may be an empty folder: the finished export takes its place, with its permissions."""
    out = tmp_path / "empty"
    out.mkdir(mode=0o750)
    os.chmod(out, 0o750)
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert out.stat().st_mode & 0o777 == 0o750
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty"]


def test_an_export_into_the_current_folder_stays_in_it(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """item 8: `cd EMPTY && lbgat export RUN --out .` fills the folder the shell is in (a rename would replace it
    under the shell); an --out that is a link is refused, as the rename would replace the link."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    inode = os.stat(".").st_ino
    assert main(["export", str(run), "--out", "."]) == 0
    assert os.stat(".").st_ino == inode and sorted(os.listdir(".")) == ["README.md", "config.yaml",
                                                                        "model.safetensors"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["here"]
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    assert main(["export", str(run), "--out", str(tmp_path / "link")]) == 2
    one_line(capsys, "is a symbolic link")
    assert not any((tmp_path / "target").iterdir())


# ------------------------------------------------------------------------------- items 10 and 13: reading


def test_eval_dot_inside_an_export_writes_beside_it(export: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """item 10: `cd EXPORT && lbgat eval .` writes eval-EXPORT beside the export, nothing inside it."""
    before = digests(export)
    monkeypatch.chdir(export)
    assert main(["eval", ".", *EVAL]) == 0
    assert digests(export) == before
    assert (export.parent / f"eval-{export.name}" / "report.json").is_file()
    assert default_out(Path("..")) == Path(os.path.abspath("..")).parent / f"eval-{export.parent.name}"
    assert default_out(Path("other.pt")) == export.parent / f"eval-{export.name}-other"


def test_an_exports_weights_file_alone_says_to_give_the_folder(export: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """item 13: `lbgat eval EXPORT/model.safetensors` and load_model on it name the folder, not --model."""
    weights = export / "model.safetensors"
    assert main(["eval", str(weights), *EVAL]) == 2
    error = one_line(capsys, "weights file of an lbgat export", f"give its folder, {export}")
    assert "plain state dict" not in error
    for arch in (None, "tiny-cnn"):
        with pytest.raises(CheckpointError, match="give its folder"):
            lbgat.load_model(weights, arch=arch)
