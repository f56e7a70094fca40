"""The cluster path of `lbgat compare` survives what happens on a cluster, run with submitit's local executor
(real processes, no SLURM): the submitting command killed (its jobs go on and the same command picks them up by
their ids), a job's training process killed mid-run (the same command again resumes that run from its last.pt and
reuses the others), and a preempted job (submitit's signal) requeued, resuming its run within the same job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lbgat.checkpoints.checkpoint import load_checkpoint
from lbgat.cli import main

pytest.importorskip("submitit")
pytestmark = pytest.mark.slow

STEPS = 100  # of the 128 of 8 epochs of 512 images
COMMAND = ["compare", "--methods", "natural,pgd-at", "--config", "cpu/mnist-5k-demo", "--set", "data.train_size=512",
           "--set", "data.val_size=0", "--set", "checkpoint_every=1", "--max-steps", str(STEPS), "--n", "64",
           "--check-n", "0", "--attacks", "clean,pgd5", "--no-progress", "--launcher", "submitit-local",
           "--gpus-per-job", "0"]


def _start(out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "lbgat", *COMMAND, "--out", str(out)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONWARNINGS="ignore"))


def _wait_for(what: Callable[[], object], seconds: float = 300.0) -> object:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out")


def _jobs(out: Path) -> dict[str, str]:
    try:
        runs = json.loads((out / "compare.json").read_text())["runs"]
    except (OSError, ValueError):
        return {}
    return {folder: record["job"]["id"] for folder, record in runs.items() if "job" in record}


def _stop(submitter: subprocess.Popen[str], out: Path) -> None:
    """After a failed test: the submitter, and the jobs it left (SIGINT to their controllers stops them)."""
    submitter.kill()
    for job_id in _jobs(out).values():
        try:
            os.kill(int(job_id), signal.SIGINT)
        except (ProcessLookupError, ValueError):
            pass


def _trainer(run: Path) -> int | None:
    """The pid of the process training ``run`` (it holds the run folder's lock), once a checkpoint exists."""
    try:
        text = (run / ".lbgat.lock").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and (run / "last.pt").is_file() else None


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _events(run: Path) -> list[str]:
    """Each event of metrics.jsonl, a stop with its reason (stopped:SIGTERM, stopped:max_steps)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    return [":".join(filter(None, (record.get("event"), record.get("reason")))) for record in records]


def _step(run: Path) -> int:
    return load_checkpoint(run / "last.pt").meta["position"]["global_step"]


def test_a_killed_submitter_and_a_killed_job(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    submitter = _start(out)
    try:
        submitted = _wait_for(lambda: len(_jobs(out)) == 2 and _jobs(out))
        submitter.kill()  # the submitting shell dies; its jobs go on
        submitter.wait()
        pid = _wait_for(lambda: _trainer(out / "pgd-at"))
        os.kill(pid, signal.SIGKILL)  # pgd-at's training, mid-run
        outcomes = (out / ".jobs").glob
        _wait_for(lambda: any("killed by SIGKILL" in path.read_text() for path in outcomes("pgd-at-*.outcome.json")))
        killed_at = _step(out / "pgd-at")
        assert 0 < killed_at < STEPS

        assert main([*COMMAND, "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        # natural: its job picked up by its id (or its outcome taken, had it finished), never submitted again
        assert "natural: picked up submitit-local job " + submitted["natural"] in printed or (
            "natural: reused the finished run" in printed)
        assert "natural: submitted" not in printed and printed.count("submitted as submitit-local job") == 1
        assert "pgd-at: submitit-local job " + submitted["pgd-at"] + " failed (the run's process was killed by " \
               "SIGKILL" in printed
        assert "pgd-at: resumed and evaluated" in printed
        assert _step(out / "pgd-at") == _step(out / "natural") == STEPS
        assert _events(out / "pgd-at").count("resumed") == 1
        assert (out / "report" / "report.md").is_file()

        # Once more: everything is reused, nothing trains or is submitted.
        checkpoints = {name: (out / name / "last.pt").read_bytes() for name in ("natural", "pgd-at")}
        assert main([*COMMAND, "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        assert printed.count("reused the finished run and its evaluation") == 2 and "submitted" not in printed
        assert checkpoints == {name: (out / name / "last.pt").read_bytes() for name in ("natural", "pgd-at")}
    finally:
        _stop(submitter, out)


def test_a_preempted_job_is_requeued_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    submitter = _start(out)
    try:
        pid = _wait_for(lambda: _trainer(out / "pgd-at"))
        os.kill(_parent(pid), signal.SIGUSR2)  # submitit's preemption signal, to the job's task
        stdout, stderr = submitter.communicate(timeout=600)
        assert submitter.returncode == 0, stderr
        assert "pgd-at: resumed and evaluated" in stdout
        events = _events(out / "pgd-at")
        assert events.count("stopped:SIGTERM") == 1 and events.count("resumed") == 1  # a checkpoint, then the rerun
        assert _step(out / "pgd-at") == STEPS
        logs = (out / ".jobs").glob("*_0_log.*")
        assert any("this job is preempted" in path.read_text() for path in logs)  # submitit's own account
    finally:
        _stop(submitter, out)



def test_a_job_over_two_processes_trains_and_evaluates_under_torchrun(tmp_path: Path, capsys) -> None:
    """--gpus-per-job 2 on this CPU: the job's run is `torchrun --nproc_per_node 2` (gloo), trained and evaluated
    in one process group (made twice, torch's default group can hang)."""
    out = tmp_path / "cmp"
    command = [part if part != "natural,pgd-at" else "pgd-at" for part in COMMAND]
    command[command.index("--max-steps") + 1] = "3"
    command[command.index("--gpus-per-job") + 1] = "2"
    assert main([*command, "--out", str(out)]) == 0
    assert "pgd-at: trained and evaluated" in capsys.readouterr().out
    for name in ("provenance.json", "eval-last/report.json"):
        assert '"processes": 2' in (out / "pgd-at" / name).read_text(), name
    assert _step(out / "pgd-at") == 3
