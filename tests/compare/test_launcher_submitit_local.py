"""`lbgat compare --launcher submitit-local`: the cluster path (one submitit job per method and seed, the jobs'
processes, their outcomes, compare.json) run end to end with submitit's local executor, real subprocesses and no
SLURM. The runs are trained and evaluated by the jobs into the same folders as the local launcher's, the report is
written once all are done, and the same command again reuses every run without a job."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from lbgat.cli import main

pytest.importorskip("submitit")

METHODS = ["natural", "pgd-at"]
SEEDS = [0, 1]
COMMAND = ["compare", "--methods", ",".join(METHODS), "--config", "cpu/mnist-5k-demo", "--set",
           "data.train_size=256", "--set", "data.val_size=0", "--max-steps", "1", "--n", "64", "--check-n", "0",
           "--attacks", "clean,pgd5", "--seeds", ",".join(map(str, SEEDS)), "--no-progress",
           "--launcher", "submitit-local", "--gpus-per-job", "0"]
RUNS = [f"{method}/seed{seed}" for method in METHODS for seed in SEEDS]


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("jobs") / "cmp"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # the submitter in this process; its jobs are processes of their own
        assert main([*COMMAND, "--out", str(out)]) == 0
    return out, printed.getvalue()


def test_one_job_per_method_and_seed_trains_and_evaluates_each_run(compared) -> None:
    out, printed = compared
    state = json.loads((out / "compare.json").read_text())["runs"]
    assert sorted(state) == RUNS
    for folder in RUNS:
        run = out / folder
        seed = folder.rsplit("seed", 1)[1]
        assert f"seed: {seed}\n" in (run / "config.yaml").read_text()
        assert (run / "last.pt").is_file() and (run / "eval-last" / "per_sample.json").is_file()
        assert "job" not in state[folder]  # collected
        assert state[folder]["evaluation"]["request"]["attacks"] == "clean,pgd5"
        assert f"{METHODS[0] if folder.startswith(METHODS[0]) else METHODS[1]} seed {seed}: trained and evaluated " \
               "(submitit-local job" in printed
    # Each job's files and logs, and its spec and outcome, are under OUT/.jobs; nothing of them elsewhere.
    jobs = out / ".jobs"
    assert len(list(jobs.glob("*.spec.json"))) == len(RUNS) == len(list(jobs.glob("*.outcome.json")))
    assert all(json.loads(path.read_text())["ok"] for path in jobs.glob("*.outcome.json"))
    assert len(list(jobs.glob("*_0_log.out"))) == len(RUNS)
    assert sorted(path.name for path in out.iterdir()) == [".jobs", "compare.json", *METHODS, "report"]


def test_the_report_is_the_local_launchers(compared) -> None:
    out, printed = compared
    markdown = (out / "report" / "report.md").read_text()
    assert "| natural [seed0] |" in markdown and "| pgd-at [seed1] |" in markdown and "## Over seeds" in markdown
    assert "### pgd-at − natural" in markdown
    lines = printed.splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("method"))
    assert [line.split()[1] for line in lines[header + 1: header + 4]] == ["0", "1", "mean"]


def test_the_same_command_again_reuses_every_run_without_a_job(compared, capsys) -> None:
    out, _ = compared
    checkpoints = {folder: (out / folder / "last.pt").read_bytes() for folder in RUNS}
    specs = sorted((out / ".jobs").glob("*.spec.json"))
    assert main([*COMMAND, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("reused the finished run and its evaluation") == len(RUNS)
    assert "submitted" not in printed and "evaluating" not in printed
    assert sorted((out / ".jobs").glob("*.spec.json")) == specs
    assert checkpoints == {folder: (out / folder / "last.pt").read_bytes() for folder in RUNS}
    assert (out / "report" / "report.md").is_file()
