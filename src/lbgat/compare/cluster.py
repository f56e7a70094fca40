"""``lbgat compare --launcher slurm``: one job per run, submitted, picked up again and waited for.

Each run (a method, or a method and seed) that has work left becomes one job (:mod:`.job`), submitted through
submitit's executor: SLURM's, or its local one for ``--launcher submitit-local``. ``compare.json`` records each
job (its launcher, id and token) as soon as it is submitted, so the submitting shell may die: the same command run
again picks the jobs up by their ids (a job still queued or running is waited for, never submitted twice), takes
the outcome of those that ended, and submits again only what is not done (a killed job's run resumes from its
``last.pt``). A run whose training (same settings, same ``last.pt``) and evaluation (same request, same
checkpoint, same report) are recorded as done is reused without a job. The report is written by the caller once
every run is done; a job that failed is named in one line after the others have finished.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..checkpoints.checkpoint import sha256_of
from ..errors import ConfigError, LbgatError
from ..storage.files import strict_json
from ..storage.locks import folder_lock
from ..structured import to_mapping
from ..train.run_dir import LAST
from .job import CompareJob, outcome_path, read_outcome, spec_path, write_spec
from .launchers import JOBS_FOLDER, SLURM, SUBMITIT_LOCAL, ClusterOptions, submitit_module
from .one_run import (
    EVAL_FOLDER,
    EvalSettings,
    Outcome,
    PlannedRun,
    clear_unstarted_run,
    evaluate_run,
    has_checkpoint,
    reusable_evaluation,
    training_seconds,
)
from .state import CompareState

LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # submitit's local executor kills a job at its time limit: a week unless --time
# submitit's signal comes this long before the time limit (at most a quarter of it); the run stops, writes last.pt and
# the job is requeued. 5 minutes, as for lbgat train under SLURM (docs/performance.md): a paper-scale torchrun job
# finishes its steps and writes its checkpoint well within it. submitit's local executor signals 30 s before.
SIGNAL_LEAD_S = 300
LOCAL_SIGNAL_LEAD_S = 30


class JobsFailed(LbgatError):
    """Some jobs of a comparison ended without their run trained and evaluated (the others are recorded)."""


@dataclass
class _Waiting:
    run: PlannedRun
    job: Any  # a submitit Job
    launcher: str
    outcome: Path  # where its outcome will be (OUT/.jobs/<token>.outcome.json)
    token: str
    reattached: bool  # picked up by its id from compare.json (submitted by an earlier lbgat compare)
    ended_at: float | None = None  # when it was first seen over without an outcome

    def over(self) -> bool:
        if self.reattached and self.launcher == SUBMITIT_LOCAL:
            return not _local_job_alive(self.job.job_id)
        return bool(self.job.done())

    def state(self) -> str:
        if self.launcher == SUBMITIT_LOCAL:
            return "running"
        return "queued" if str(self.job.state).upper() == "PENDING" else "running"


def config_sha256(run: PlannedRun) -> str:
    """The fingerprint of a run's settings: a job's result is reused only for the settings it was trained with."""
    return sha256(strict_json(to_mapping(run.config), sort_keys=True).encode()).hexdigest()


def run_on_cluster(options: ClusterOptions, out: Path, runs: list[PlannedRun], settings: EvalSettings,
                   state: CompareState, progress: bool) -> list[Outcome]:
    """Every run trained and evaluated by a job (or reused); returns the outcomes in the order of ``runs``."""
    submitit_module()
    jobs_dir = out / JOBS_FOLDER
    if jobs_dir.is_symlink() or (jobs_dir.exists() and not jobs_dir.is_dir()):
        raise ConfigError(f"{jobs_dir} is not a folder; a comparison keeps its jobs' files there (move it away)")
    jobs_dir.mkdir(exist_ok=True)
    say = print
    done: dict[str, tuple[str, bool]] = {}  # the runs done by a job of this session: how trained, whether evaluated
    waiting: list[_Waiting] = []
    to_submit: list[PlannedRun] = []
    # First every run's state, so that a refusal comes before any submission.
    for run in runs:
        record = state.entry(run.folder)
        job = record.get("job")
        if isinstance(job, dict):
            picked = _pick_up(job, run, out, jobs_dir, settings, state, say)
            if picked is not None:
                waiting.append(picked)
                continue
        if _reusable(run, record, out, settings):
            say(f"== {run.label}: reused the finished run and its evaluation in {out / run.folder}")
            continue
        to_submit.append(run)
    executor = _executor(options, jobs_dir) if to_submit else None
    for number, run in enumerate(to_submit, start=1):
        waiting.append(_submit(executor, options, run, out, jobs_dir, settings, state, say))
        say(f"== [{number}/{len(to_submit)}] {run.label}: submitted as {options.launcher} job "
            f"{waiting[-1].job.job_id} (log: {waiting[-1].job.paths.stdout})")
    failures = _wait(waiting, len(runs), options, state, done, progress, say)
    if failures:
        raise JobsFailed(f"{len(failures)} of {len(runs)} runs failed: {'; '.join(failures)}; the others are "
                         "recorded in compare.json: run the same command again to submit the failed ones again")
    return [_outcome(run, out, settings, state, done.get(run.folder), progress, say) for run in runs]


def refuse_running_jobs(out: Path, runs: list[PlannedRun], state: CompareState) -> None:
    """Before the local launcher trains: a run still trained by a job of an earlier ``--launcher slurm`` is refused
    (one line); a job that has ended is collected (its evaluation then is reused like any other)."""
    jobs_dir = out / JOBS_FOLDER
    for run in runs:
        record = state.entry(run.folder)
        job = record.get("job")
        if not isinstance(job, dict):
            continue
        token = str(job.get("token"))
        outcome = read_outcome(outcome_path(jobs_dir, token), token)
        if outcome is None and _active(job, jobs_dir):
            raise ConfigError(f"{out / run.folder} is still trained by {job.get('launcher')} job {job.get('id')}; "
                              f"wait for it with the same --launcher {job.get('launcher')} command, or cancel it first")
        record.pop("job")
        if outcome is not None and outcome.get("ok"):
            _take(record, outcome)
        state.save()


def _pick_up(job: dict[str, Any], run: PlannedRun, out: Path, jobs_dir: Path, settings: EvalSettings,
             state: CompareState, say: Callable[[str], None]) -> _Waiting | None:
    """A job recorded in compare.json: waited for if it is still queued or running, else its outcome taken."""
    record = state.entry(run.folder)
    token, launcher, job_id = str(job.get("token")), str(job.get("launcher")), str(job.get("id"))
    outcome = read_outcome(outcome_path(jobs_dir, token), token)
    if outcome is None and _active(job, jobs_dir):
        if job.get("config_sha256") != config_sha256(run) or job.get("evaluation") != settings.asked():
            raise ConfigError(f"{out / run.folder} is still trained by {launcher} job {job_id} with other settings; "
                              "wait for it with the command that submitted it, or cancel it first")
        say(f"== {run.label}: picked up {launcher} job {job_id}, still queued or running")
        return _Waiting(run, _reattach(launcher, jobs_dir, job_id), launcher, outcome_path(jobs_dir, token), token,
                        reattached=True)
    record.pop("job", None)
    if outcome is None:
        say(f"   {run.label}: {launcher} job {job_id} ended without finishing (killed?); its run is submitted again")
    elif outcome.get("ok"):
        _take(record, outcome)
    else:
        say(f"   {run.label}: {launcher} job {job_id} failed ({outcome['message']}); its run is submitted again")
    state.save()
    return None


def _take(record: dict[str, Any], outcome: dict[str, Any]) -> None:
    record["trained"] = {"config_sha256": outcome.get("config_sha256"),
                         "checkpoint_sha256": outcome.get("checkpoint_sha256")}
    record["evaluation"] = outcome.get("evaluation")


def _reusable(run: PlannedRun, record: dict[str, Any], out: Path, settings: EvalSettings) -> bool:
    done = record.get("trained") or {}
    last = out / run.folder / LAST
    return (done.get("config_sha256") == config_sha256(run) and last.is_file()
            and done.get("checkpoint_sha256") == sha256_of(last)
            and reusable_evaluation(record.get("evaluation"), settings, last) is not None)


def signal_lead_s(options: ClusterOptions) -> int:
    if options.launcher != SLURM:
        return LOCAL_SIGNAL_LEAD_S
    return min(SIGNAL_LEAD_S, (options.time_minutes or LOCAL_TIMEOUT_MIN) * 15)


def _executor(options: ClusterOptions, jobs_dir: Path) -> Any:
    submitit = submitit_module()
    cluster = "slurm" if options.launcher == SLURM else "local"
    try:
        executor = submitit.AutoExecutor(folder=jobs_dir, cluster=cluster)
    except RuntimeError as error:  # e.g. no srun: not on a SLURM cluster
        raise ConfigError(f"--launcher {options.launcher}: {error}") from None
    minutes = options.time_minutes or LOCAL_TIMEOUT_MIN
    parameters: dict[str, Any] = {"timeout_min": minutes, "nodes": 1, "tasks_per_node": 1}
    if options.gpus_per_job:
        parameters["gpus_per_node"] = options.gpus_per_job
    if options.cpus_per_job is not None:
        parameters["cpus_per_task"] = options.cpus_per_job
    if options.launcher == SLURM:
        parameters.update(slurm_partition=options.partition, slurm_signal_delay_s=signal_lead_s(options))
        if options.account:
            parameters["slurm_account"] = options.account
        if options.sbatch:
            parameters["slurm_additional_parameters"] = dict(options.sbatch)
    try:
        executor.update_parameters(**parameters)
    except ValueError as error:
        raise ConfigError(f"--launcher {options.launcher}: {str(error).splitlines()[0]}") from None
    return executor


def _submit(executor: Any, options: ClusterOptions, run: PlannedRun, out: Path, jobs_dir: Path,
            settings: EvalSettings, state: CompareState, say: Callable[[str], None]) -> _Waiting:
    run_dir = out / run.folder
    record = state.entry(run.folder)
    if not has_checkpoint(run_dir):
        with folder_lock(run_dir, "run directory", through_link=False):
            if record.get("run_started"):  # no job of it is running (see _pick_up)
                clear_unstarted_run(run_dir, say)
        record.clear()  # a new run: its old evaluation (if any) is no longer about this run
        record["run_started"] = True
    name = run.folder.replace("/", "-")
    token = f"{name}-{uuid.uuid4().hex[:12]}"
    spec = spec_path(jobs_dir, token)
    write_spec(spec, {
        "token": token, "label": run.label, "folder": run.folder, "cwd": os.getcwd(),
        "run_dir": str(run_dir.absolute()), "outcome": str(outcome_path(jobs_dir, token).absolute()),
        "config": to_mapping(run.config), "config_sha256": config_sha256(run),
        "evaluation": {**settings.asked(), "device": settings.device},
        "earlier_evaluation": record.get("evaluation"),
    })
    executor.update_parameters(name=f"lbgat-{name}")
    try:
        # The job waits for its run's checkpoint for most of the signal's lead, never past the kill.
        job = executor.submit(CompareJob(spec.absolute(), options.gpus_per_job, 0.8 * signal_lead_s(options)))
    except Exception as error:  # submitit's FailedJobError carries sbatch's own message
        state.save()
        detail = " ".join(str(error).split()) or type(error).__name__
        raise ConfigError(f"{options.launcher} refused the job of {run.label}: {detail}") from None
    record["job"] = {"launcher": options.launcher, "id": str(job.job_id), "token": token,
                     "config_sha256": config_sha256(run), "evaluation": settings.asked(),
                     "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    state.save()
    return _Waiting(run, job, options.launcher, outcome_path(jobs_dir, token), token, reattached=False)


def _wait(waiting: list[_Waiting], total: int, options: ClusterOptions, state: CompareState,
          done: dict[str, tuple[str, bool]], progress: bool, say: Callable[[str], None]) -> list[str]:
    """Wait for every job, taking each outcome as it comes; returns one line per failed job."""
    failures: list[str] = []
    if not waiting:
        return failures
    bar = tqdm(total=total, initial=total - len(waiting), desc=f"compare: {len(waiting)} {options.launcher} jobs",
               unit="run", disable=not progress, dynamic_ncols=True, file=sys.stderr)
    write: Callable[[str], None] = bar.write if progress else say
    grace = 2 * options.poll  # a shared file system may show a job's outcome a little after the job ended
    pending = list(waiting)
    try:
        while pending:
            for item in list(pending):
                outcome = read_outcome(item.outcome, item.token)
                if outcome is None:
                    if not item.over():
                        continue
                    item.ended_at = item.ended_at or time.monotonic()
                    if time.monotonic() - item.ended_at < grace:
                        continue
                pending.remove(item)
                bar.update(1)
                record = state.entry(item.run.folder)
                record.pop("job", None)
                where = f"{item.launcher} job {item.job.job_id}"
                if outcome is not None and outcome.get("ok"):
                    _take(record, outcome)
                    done[item.run.folder] = (str(outcome.get("training")), bool(outcome.get("evaluated")))
                    write(f"   {item.run.label}: {outcome.get('training')} and "
                          f"{'evaluated' if outcome.get('evaluated') else 'its evaluation reused'} ({where})")
                else:
                    message = outcome["message"] if outcome is not None else "ended without finishing (killed?)"
                    failures.append(f"{item.run.label}: {message} ({where}, log {item.job.paths.stderr})")
                    write(f"   {item.run.label}: FAILED: {message} ({where})")
                state.save()
            if pending:
                states = [item.state() for item in pending]
                bar.set_postfix_str(", ".join(f"{states.count(name)} {name}" for name in ("running", "queued")
                                              if states.count(name)))
                _pause(options.poll)
    except KeyboardInterrupt:
        write("   interrupted: run the same command again to wait for the jobs still queued or running (compare.json "
              "holds their ids), resume the stopped ones and write the report")
        raise
    finally:
        bar.close()
    return failures


def _pause(seconds: float) -> None:
    time.sleep(seconds)


def _outcome(run: PlannedRun, out: Path, settings: EvalSettings, state: CompareState,
             done: tuple[str, bool] | None, progress: bool, say: Callable[[str], None]) -> Outcome:
    run_dir = out / run.folder
    last = run_dir / LAST
    record = state.entry(run.folder)
    report = reusable_evaluation(record.get("evaluation"), settings, last)
    training, evaluated_by_job = done or ("reused", False)
    evaluation = "evaluated" if evaluated_by_job else "reused"
    report_dir = run_dir / EVAL_FOLDER
    if report is None:  # changed since its job evaluated it: evaluated here, as the local launcher would
        report, report_dir, evaluated = evaluate_run(settings, last, record.get("evaluation"), progress, say)
        record["evaluation"] = evaluated
        state.save()
        evaluation = "evaluated"
    return Outcome(run.entry, run_dir, last, training, evaluation, report, report_dir,
                   training_seconds(run_dir, 0.0), run.seed)


def _active(job: dict[str, Any], jobs_dir: Path) -> bool:
    """Whether a job recorded in compare.json may still be queued or running."""
    launcher, job_id = job.get("launcher"), str(job.get("id"))
    if launcher == SUBMITIT_LOCAL:
        return _local_job_alive(job_id)
    if launcher != SLURM:
        return False
    try:
        return not _reattach(SLURM, jobs_dir, job_id).done(force_check=True)
    except ConfigError:  # submitit is not installed here: the job cannot be asked about
        return True


def _reattach(launcher: str, jobs_dir: Path, job_id: str) -> Any:
    submitit = submitit_module()
    job_class = submitit.SlurmJob if launcher == SLURM else submitit.LocalJob
    return job_class(folder=jobs_dir, job_id=job_id)


def _local_job_alive(job_id: str) -> bool:
    """A submitit-local job of an earlier lbgat compare: its controller process (whose pid is the job id) lives."""
    if not job_id.isdigit():
        return False
    try:
        command = Path(f"/proc/{job_id}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: whether the pid lives at all
        try:
            os.kill(int(job_id), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return b"submitit.local._local" in command
