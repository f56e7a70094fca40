"""One job of ``lbgat compare --launcher slurm`` (or ``submitit-local``): one run trained and evaluated.

A job is two processes. submitit runs :class:`CompareJob` (pickled by the submitting ``lbgat compare``) in the
job's one task; it starts the run's process, ``python -m lbgat.compare.job SPEC`` on one GPU (or on the CPU), or
``torchrun --nproc_per_node N -m lbgat.compare.job SPEC`` over N GPUs, and waits for it. That process trains and
evaluates the run with the code the local launcher runs (:mod:`.one_run`), and writes the job's outcome.

The spec (``OUT/.jobs/<token>.spec.json``, written by the submitter) holds the run's full training settings, the
evaluation protocol and the record of an earlier evaluation; it is JSON, so a job never unpickles anything of
lbgat's. The outcome (``OUT/.jobs/<token>.outcome.json``) is written once the job is over for good: by the run's
process when the run is trained and evaluated, or when it fails for a reason a retry would not cure (bad settings,
a diverged run); by :class:`CompareJob` when that process ends in any other way (killed, stopped by a signal).

Preemption and time limits follow submitit's checkpointing protocol: on its signal (USR2 by default) submitit calls
:meth:`CompareJob.checkpoint`, which stops the run's process with SIGTERM (lbgat's trainer then finishes its step,
writes ``last.pt`` and exits) and returns the same job to be requeued; the requeued job resumes from ``last.pt``.
The run's process ignores that signal itself (SLURM signals every process of a job), and is sent SIGTERM if the
job's task dies (Linux), so it never trains on without its job.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError, LbgatError
from ..storage.files import strict_json, write_text_atomic

FORMAT = 1
STOP_WAIT_S = 24.0  # after SIGTERM, how long a preempted job waits for the run's checkpoint (< the signal's lead)
_PR_SET_PDEATHSIG = 1


def spec_path(jobs_dir: Path, token: str) -> Path:
    return jobs_dir / f"{token}.spec.json"


def outcome_path(jobs_dir: Path, token: str) -> Path:
    return jobs_dir / f"{token}.outcome.json"


def write_spec(path: Path, spec: dict[str, Any]) -> None:
    write_text_atomic(path, strict_json({"lbgat_compare_job": FORMAT, **spec}, indent=2) + "\n")


def read_spec(path: Path) -> dict[str, Any]:
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"cannot read the job's spec {path}: {error}") from None
    if not isinstance(spec, dict) or spec.get("lbgat_compare_job") != FORMAT:
        raise ConfigError(f"{path} is not the spec of an `lbgat compare` job")
    return spec


def write_outcome(spec: dict[str, Any], **outcome: Any) -> None:
    record = {"lbgat_compare_job": FORMAT, "token": spec["token"], **outcome}
    write_text_atomic(Path(spec["outcome"]), strict_json(record, indent=2) + "\n")


def read_outcome(path: Path, token: str) -> dict[str, Any] | None:
    """The outcome of the job ``token``, or None while there is none (a damaged one reads as a failure)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as error:
        return {"ok": False, "message": f"its outcome {path} cannot be read: {error.strerror or error}"}
    try:
        outcome = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"ok": False, "message": f"its outcome {path} is damaged"}
    if not isinstance(outcome, dict) or outcome.get("lbgat_compare_job") != FORMAT or outcome.get("token") != token:
        return {"ok": False, "message": f"{path} is not the outcome of this job"}
    if outcome.get("ok") is not True:
        return {"ok": False, "message": str(outcome.get("message") or "it failed without a message")}
    return outcome


def task_command(spec: Path, gpus: int) -> list[str]:
    """The run's process: one process on one GPU (or the CPU), torchrun over several."""
    if gpus <= 1:
        return [sys.executable, "-m", "lbgat.compare.job", str(spec)]
    # --standalone: a rendezvous of this job's own on a free port, so that jobs sharing a node never meet.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus),
            "-m", "lbgat.compare.job", str(spec)]


class CompareJob:
    """What submitit runs: the run's process, started and watched; requeued on preemption (``checkpoint``)."""

    def __init__(self, spec: Path, gpus: int, stop_wait_s: float = STOP_WAIT_S) -> None:
        self.spec = spec
        self.gpus = gpus
        self.stop_wait_s = stop_wait_s
        self._child: subprocess.Popen[bytes] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "gpus": self.gpus, "stop_wait_s": self.stop_wait_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.spec, self.gpus, self.stop_wait_s = state["spec"], state["gpus"], state["stop_wait_s"]
        self._child = None

    def __call__(self) -> str:
        spec = read_spec(self.spec)
        if (read_outcome(Path(spec["outcome"]), spec["token"]) or {}).get("ok"):
            return "done before"  # requeued just after the run had finished
        try:
            _prepare(Path(spec["run_dir"]))
        except LbgatError as error:  # e.g. the run folder is another process's
            write_outcome(spec, ok=False, message=str(error))
            raise RuntimeError(str(error)) from None
        command = task_command(self.spec, self.gpus)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(int(self.stop_wait_s * 0.8)))  # torchrun's wait
        print(f"lbgat compare job: {' '.join(command)}", flush=True)
        self._child = subprocess.Popen(command, cwd=spec["cwd"], env=env, preexec_fn=_child_setup())
        while (code := self._child.poll()) is None:
            time.sleep(0.5)
        outcome = read_outcome(Path(spec["outcome"]), spec["token"])
        if outcome is None:
            message = _ended(code)
            write_outcome(spec, ok=False, message=message)
            raise RuntimeError(message)
        if not outcome.get("ok"):
            raise RuntimeError(outcome["message"])
        return "done"

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Preempted, or out of time: stop the run (it writes last.pt) and be requeued; the rerun resumes it."""
        from submitit.helpers import DelayedSubmission

        child = self._child
        if child is not None and child.returncode is None:
            try:
                child.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            _wait_for(child.pid, self.stop_wait_s)
        return DelayedSubmission(CompareJob(self.spec, self.gpus, self.stop_wait_s))


def _prepare(run_dir: Path) -> None:
    """A requeued job whose run stopped before its first checkpoint starts it again (its run files were written by
    this comparison: the submitter marked the run as started before submitting it)."""
    from ..storage.locks import folder_lock
    from .one_run import clear_unstarted_run, has_checkpoint

    with folder_lock(run_dir, "run directory", through_link=False):
        if not has_checkpoint(run_dir):
            clear_unstarted_run(run_dir, print)


def _ended(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
        return (f"the run's process was killed by {name}; run the same command again to resume the run from its "
                "last checkpoint")
    if code == 128 + signal.SIGTERM:
        return ("the run was stopped by SIGTERM (it saved a checkpoint); run the same command again to resume it")
    return f"the run's process exited with status {code} without a result (see the job's log)"


def _wait_for(pid: int, seconds: float) -> None:
    """Wait for a child to end without Popen (whose lock a signal handler may interrupt it holding)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            ended, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if ended:
            return
        time.sleep(0.2)


def _child_setup() -> Any:
    """What the run's process sets before it starts: it ignores the preemption signal (its job's task handles
    it), and is sent SIGTERM when that task dies."""
    from submitit import JobEnvironment

    preempt = getattr(signal, f"SIG{JobEnvironment.USR_SIG}", signal.SIGUSR2)
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
    except (OSError, AttributeError):
        prctl = None
    return functools.partial(_in_child, preempt, prctl)


def _in_child(preempt: int, prctl: Any) -> None:
    signal.signal(preempt, signal.SIG_IGN)  # inherited by torchrun and its workers
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def main(argv: list[str]) -> int:
    """The run's process (every process of it under torchrun): train, evaluate, write the outcome."""
    from ..checkpoints.checkpoint import sha256_of
    from ..runtime.world import world_from_environment
    from ..train.errors import TrainingStopped

    spec = read_spec(Path(argv[0]))
    main_process = world_from_environment().is_main
    say = print if main_process else _quiet
    try:
        last, training, evaluated = _train_and_evaluate(spec, say)
    except TrainingStopped as error:  # preempted (the job is requeued) or cancelled: no outcome yet
        if error.announce:
            print(f"lbgat compare job: {error.label}: {error}", file=sys.stderr)
        return error.exit_code
    except LbgatError as error:
        if main_process:
            write_outcome(spec, ok=False, message=str(error))
        print(f"lbgat compare job: {error.label}: {error}", file=sys.stderr)
        return error.exit_code
    except Exception as error:
        if main_process:
            write_outcome(spec, ok=False, message=f"{type(error).__name__}: {error} (see the job's log)")
        raise
    if main_process:
        write_outcome(spec, ok=True, training=training, checkpoint_sha256=sha256_of(last),
                      config_sha256=spec["config_sha256"], evaluated=evaluated is not None,
                      evaluation=evaluated or spec.get("earlier_evaluation"))
        say(f"== {spec['label']}: done")
    return 0


def _quiet(_: str) -> None:
    pass


def _train_and_evaluate(spec: dict[str, Any], say: Any) -> tuple[Path, str, dict[str, Any] | None]:
    from ..config import TrainConfig
    from ..evaluate.distributed import GATHER_TIMEOUT
    from ..runtime.arithmetic import deterministic_algorithms
    from ..runtime.world import device_for, process_group, resolve_device, world_from_environment
    from ..structured import from_mapping
    from ..train.parallel import barrier
    from .one_run import EvalSettings, evaluate_run, train_run

    config = from_mapping(TrainConfig, spec["config"])
    settings = EvalSettings(**spec["evaluation"])
    run_dir = Path(spec["run_dir"])
    world = world_from_environment()
    requested = resolve_device(config.device)
    # Under torchrun, one process group for the training and the evaluation (which then join it instead of making
    # their own): torch's default group destroyed and made again in the same processes can hang in its next
    # collective (seen with gloo, torch 2.13, 3 times in 8). Its timeout is the evaluation's, whose ranks wait while
    # rank 0 runs the checks. Deterministic kernels are chosen before the group starts CUDA, as train() does.
    with (deterministic_algorithms(config.deterministic, requested),
          process_group(world, device_for(world, requested), GATHER_TIMEOUT)):
        say(f"== {spec['label']}: training into {run_dir}")
        last, training = train_run(config, run_dir, False, say)
        barrier()  # every rank evaluates the last.pt that rank 0 has finished writing
        _, _, evaluated = evaluate_run(settings, last, spec.get("earlier_evaluation"), False, say)
    return last, training, evaluated

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
