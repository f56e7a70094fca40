"""``lbgat compare --launcher``: where the runs of a comparison train.

``local`` (the default) trains and evaluates them one after another in the ``lbgat compare`` process. ``slurm``
submits one SLURM job per run through submitit (``pip install 'lbgat[slurm]'``); ``submitit-local`` runs the same
jobs as processes of this machine through submitit's local executor, for trying the cluster path without a
cluster. What a job does is :mod:`.job`; submitting, picking up and waiting for them is :mod:`.cluster`. This
module only reads and checks the options, so that a wrong one is one line before anything is submitted.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from types import ModuleType

from ..errors import ConfigError

LOCAL, SLURM, SUBMITIT_LOCAL = "local", "slurm", "submitit-local"
LAUNCHERS = (LOCAL, SLURM, SUBMITIT_LOCAL)
JOBS_FOLDER = ".jobs"  # OUT/.jobs: submitit's job files and logs, and each job's spec and outcome
INSTALL = "pip install 'lbgat[slurm]' (or pip install submitit)"
_SBATCH_KEY = re.compile(r"[a-z][a-z0-9-]*")
# sbatch --time: MINUTES, MINUTES:SECONDS, HOURS:MINUTES:SECONDS, DAYS-HOURS, DAYS-HOURS:MINUTES,
# DAYS-HOURS:MINUTES:SECONDS
_TIME = re.compile(r"(?:(?P<days>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?")


@dataclass(frozen=True)
class ClusterOptions:
    """How the jobs of ``--launcher slurm`` (or ``submitit-local``) are asked for."""

    launcher: str = SLURM
    partition: str | None = None
    gpus_per_job: int = 1  # 0: a CPU job; 1: one training process; N > 1: torchrun over N GPUs
    time_minutes: int | None = None  # the job's time limit; it is requeued (and resumes) when it runs out
    account: str | None = None
    cpus_per_job: int | None = None
    sbatch: tuple[tuple[str, str], ...] = ()  # further sbatch options, e.g. (("qos", "high"),)
    poll_seconds: float | None = None  # how often to look at the jobs; None: 30 s on SLURM, 1 s on this machine

    @property
    def poll(self) -> float:
        if self.poll_seconds is not None:
            return self.poll_seconds
        return 30.0 if self.launcher == SLURM else 1.0


def parse_time_limit(text: str) -> int:
    """sbatch's ``--time`` formats to whole minutes (rounded up): ``90``, ``1:30:00``, ``2-00:00:00``."""
    match = _TIME.fullmatch(text.strip())
    if not match:
        raise ConfigError(f"--time: {text!r} is not a time limit; write it as sbatch does: MINUTES, "
                          "HOURS:MINUTES:SECONDS or DAYS-HOURS:MINUTES:SECONDS (e.g. --time 24:00:00)")
    days, a, b, c = (int(value) if value is not None else None for value in match.group("days", "a", "b", "c"))
    if days is not None:  # DAYS-HOURS[:MINUTES[:SECONDS]]
        seconds = ((days * 24 + (a or 0)) * 60 + (b or 0)) * 60 + (c or 0)
    elif c is not None:  # HOURS:MINUTES:SECONDS
        seconds = ((a or 0) * 60 + (b or 0)) * 60 + c
    else:  # MINUTES[:SECONDS]
        seconds = (a or 0) * 60 + (b or 0)
    if seconds <= 0:
        raise ConfigError(f"--time: {text!r} is no time at all; give the job's time limit, e.g. --time 24:00:00")
    return -(-seconds // 60)


def parse_sbatch_option(text: str) -> tuple[str, str]:
    """``--slurm-param qos=high`` -> ("qos", "high"): any sbatch option, written without its dashes."""
    key, equals, value = text.partition("=")
    key = key.strip().removeprefix("--")
    if not equals or not _SBATCH_KEY.fullmatch(key) or not value.strip():
        raise ConfigError(f"--slurm-param: write an sbatch option as KEY=VALUE (e.g. --slurm-param qos=high, "
                          f"--slurm-param constraint=a100), got {text!r}")
    return key, value.strip()


def cluster_options(launcher: str, *, partition: str | None = None, gpus_per_job: int | None = None,
                    time: str | None = None, account: str | None = None, cpus_per_job: int | None = None,
                    sbatch: list[str] | tuple[str, ...] = ()) -> ClusterOptions | None:
    """The options of ``--launcher``, checked; None for the local launcher (which takes none of them)."""
    if launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher: unknown launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}")
    given = {"--partition": partition, "--gpus-per-job": gpus_per_job, "--time": time, "--slurm-account": account,
             "--cpus-per-job": cpus_per_job, "--slurm-param": list(sbatch) or None}
    if launcher == LOCAL:
        named = [flag for flag, value in given.items() if value is not None]
        if named:
            raise ConfigError(f"{named[0]} is an option of --launcher slurm (or submitit-local); the local launcher "
                              "trains in this process")
        return None
    if launcher == SUBMITIT_LOCAL:
        named = [flag for flag in ("--partition", "--slurm-account", "--slurm-param") if given[flag] is not None]
        if named:
            raise ConfigError(f"{named[0]} is an option of --launcher slurm; submitit-local runs the jobs on this "
                              "machine")
    if launcher == SLURM and not partition:
        raise ConfigError("--launcher slurm needs --partition (the SLURM partition to submit the jobs to)")
    if launcher == SLURM and time is None:
        raise ConfigError("--launcher slurm needs --time, each job's time limit as sbatch writes it (e.g. --time "
                          "24:00:00); a job that reaches it is requeued and resumes from its last checkpoint")
    if gpus_per_job is not None and gpus_per_job < 0:
        raise ConfigError(f"--gpus-per-job must be >= 0 (0: a CPU job), got {gpus_per_job}")
    if cpus_per_job is not None and cpus_per_job < 1:
        raise ConfigError(f"--cpus-per-job must be >= 1, got {cpus_per_job}")
    options = ClusterOptions(launcher=launcher, partition=partition, account=account, cpus_per_job=cpus_per_job,
                             gpus_per_job=1 if gpus_per_job is None else gpus_per_job,
                             time_minutes=parse_time_limit(time) if time is not None else None,
                             sbatch=tuple(parse_sbatch_option(text) for text in sbatch))
    submitit_module()  # installed?
    return options


def submitit_module() -> ModuleType:
    """submitit, or one line saying how to install it (it is an optional dependency of lbgat)."""
    try:
        return importlib.import_module("submitit")
    except ImportError:
        raise ConfigError(f"--launcher slurm and submitit-local need the submitit package: {INSTALL}") from None
