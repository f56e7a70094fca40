"""The training loop: schedule, checkpoints every epoch, robust validation, metrics, progress."""

from __future__ import annotations

import dataclasses
import math
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..attacks.input_only import input_only
from ..checkpoints.averaged_weights import PREFIX, held_average
from ..checkpoints.checkpoint import Checkpoint, load_state_strict, save_checkpoint
from ..config import TrainConfig, upgrade_retired_settings
from ..data import Dataset
from ..data.identity import check_same_data, check_same_extra
from ..errors import CheckpointError, ConfigError
from ..evaluate.specs import AttackSpec
from ..evaluate.suite import run_suite
from ..methods.factory import MethodChoice
from ..runtime.arithmetic import describe_arithmetic, deterministic_algorithms, float32_mode
from ..runtime.collectives import all_reduce_sum, is_distributed
from ..runtime.compilation import step_begins
from ..runtime.host_memory import keep_freed_memory
from ..runtime.provenance import code_version
from ..runtime.world import World, device_for, process_group, resolve_device, world_from_environment
from ..storage.files import append_line, check_writable, strict_json
from ..storage.locks import folder_lock
from ..structured import to_mapping
from . import parallel
from .accounting import EpochTotals, LogInterval, Position
from .averaging import build_average
from .collapse_probe import CollapseProbe, collapse_warning
from .errors import CheckpointWriteError, TrainingDiverged, TrainingStopped
from .gpu import cudnn_autotune
from .preflight import check_disk_space
from .resume import differences, most_meaningful_first
from .run_dir import BEST, LAST, PREVIOUS, check_run_dir, last_good_checkpoint, write_run_files
from .schedule import lr_at, momentum_at
from .setup import RunParts, build_parts, expected_image_shape, load_data, load_extra_data, resolve, validate

# --on-nan skip gives up after this many non-finite steps in a row: the run has diverged for good.
MAX_CONSECUTIVE_SKIPS = 10
STOP_SIGNALS = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}
# Under torchrun the ranks agree on a stop (an all-reduce and a host sync) every this many steps, and
# at every log interval, checkpoint and epoch end: a stop signal takes effect at most this many steps late.
STOP_CHECK_EVERY = 10


@dataclass
class TrainResult:
    run_dir: Path
    last: Path
    best: Path | None
    position: Position
    finished: bool
    is_main: bool = True  # False on the other processes of a torchrun job
    note: str | None = None  # said before the summary, e.g. that a resumed run had nothing left to do


class Trainer:
    """Runs one training job described by a resolved :class:`TrainConfig`."""

    def __init__(self, parts: RunParts, run_dir: Path, *, progress: bool = True) -> None:
        self.parts = parts
        self.config = parts.config
        self.run_dir = run_dir
        self.world: World = parts.world
        # Rank 0 alone logs, shows progress and writes checkpoints; every rank holds the same weights.
        self.progress = progress and self.world.is_main
        self.position = Position()
        self.epoch_totals = EpochTotals()
        self.best: dict[str, Any] | None = None
        # False after a resume from last.prev.pt: the damaged last.pt must not replace that good fallback.
        self.keep_last_as_previous = True
        self.metrics_path = run_dir / "metrics.jsonl"
        self.stop_requested: int | None = None  # the stop signal received (SIGTERM/SIGINT), if any
        self.collapse_probe = CollapseProbe(parts) if self.world.is_main else None
        self.average = None if self.config.average.kind == "none" else build_average(
            self.config.average, parts.method.student, parts.student_spec, parts.device, self.config.channels_last)

    # ----------------------------------------------------------------- state
    def _meta(self, kind: str) -> dict[str, Any]:
        parts = self.parts
        return {
            "kind": kind,
            "config": to_mapping(self.config),
            "student": parts.student_spec.to_dict(),
            "teacher": parts.teacher_spec.to_dict() if parts.teacher_spec else None,
            "dataset": {
                "name": parts.dataset.name, "source": parts.dataset.source,
                "root": str(Path(self.config.data.root).resolve()) if self.config.data.root else None,
                "classes": list(parts.dataset.classes), "image_shape": list(parts.dataset.image_shape),
                "fingerprint": parts.dataset.fingerprint,
                "extra": parts.extra.describe() if parts.extra is not None else None,
            },
            "position": dataclasses.asdict(self.position),
            "epoch_totals": dataclasses.asdict(self.epoch_totals),
            "best": self.best,
            "code_version": code_version(),
            "processes": self.world.size,
            "grad_scaler": self.parts.precision.state_dict(),
            **({"average": self.average.record()} if self.average is not None else {}),
        }

    def _save(self, path: Path, kind: str, *, with_optimizer: bool = True, keep_previous: Path | None = None) -> None:
        if not self.world.is_main:
            return
        # No CUDA generator states: every random draw of training comes from the counter-based hash of
        # lbgat.runtime.rng, so there is nothing on the GPU to restore (checkpoints that hold them still load).
        state = {key: value.detach().cpu() for key, value in self.parts.method.state_dict().items()}
        if self.average is not None:
            state.update(self.average.state())
        optimizer = self.parts.optimizer.state_dict() if with_optimizer else None
        meta = self._meta(kind)
        try:
            save_checkpoint(path, meta, {**state, "rng.torch_cpu": torch.get_rng_state()}, optimizer,
                            keep_previous=keep_previous)
        except OSError as error:  # a full disk, a quota, a folder gone: the write left nothing behind
            raise CheckpointWriteError(path, error, self.run_dir) from None

    def restore(self, checkpoint: Checkpoint) -> None:
        method_state = {key: value for key, value in checkpoint.state.items()
                        if not key.startswith(("rng.", PREFIX + "."))}
        load_state_strict(self.parts.method, method_state, checkpoint.path)
        if self.average is not None:
            record = held_average(checkpoint.meta)
            if record is None or record["kind"] != self.config.average.kind:
                raise CheckpointError(f"{checkpoint.path} holds no {self.config.average.kind} average of the weights, "
                                      "so it cannot be resumed with average settings")
            self.average.load(checkpoint.network_state(PREFIX), record, checkpoint.path)
        if checkpoint.optimizer is None:
            raise ConfigError(f"{checkpoint.path} holds no optimiser state, so it cannot be resumed (use {LAST})")
        try:
            self.parts.optimizer.load_state_dict(checkpoint.optimizer)
            self.parts.precision.load_state_dict(checkpoint.meta.get("grad_scaler"))
        except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as error:
            raise CheckpointError(f"{checkpoint.path} holds optimiser or gradient-scaler state that does not fit "
                                  f"the run: {' '.join(str(error).split())[:200]}") from None
        self.position = Position(**checkpoint.meta["position"])
        self.epoch_totals = EpochTotals(**checkpoint.meta["epoch_totals"])
        self.best = checkpoint.meta.get("best")
        if "rng.torch_cpu" in checkpoint.state:
            torch.set_rng_state(checkpoint.state["rng.torch_cpu"])

    # ----------------------------------------------------------------- loop
    def log(self, record: dict[str, Any]) -> None:
        if not self.world.is_main:
            return
        # Strict JSON (NaN and infinities as null), one record per line, never after an unfinished line.
        append_line(self.metrics_path, strict_json(record))

    def _validate(self, model: nn.Module) -> dict[str, float] | None:
        """Held-out clean and PGD accuracy of ``model`` (the student, or the average of its weights)."""
        loader = self.parts.val_loader
        if loader is None:
            return None
        val = self.config.val
        specs = [
            AttackSpec("clean", "clean"),
            AttackSpec(f"pgd{val.steps}", "pgd", eps=val.eps, steps=val.steps, step_size=val.step_size,
                       random_start=True),
        ]
        # Under torchrun each rank evaluates its share of every batch with rank 0's BN statistics, in fp32.
        parallel.broadcast_buffers(self.parts.method)
        if self.average is not None:
            parallel.broadcast_buffers(self.average.model)
        # Under --compile the attack runs the compiled student with frozen weights: input-only gradients.
        result = run_suite(input_only(model), loader, specs, progress=self.progress, description="validate")
        counts = torch.tensor([float(result.outcomes[spec.name].count) for spec in specs] + [len(result.indices)],
                              dtype=torch.float64, device=self.parts.device)
        *correct, total = all_reduce_sum(counts).tolist()
        clean, robust = (count / total for count in correct)
        return {"clean_acc": clean, "robust_acc": robust, "n": int(total)}

    def run(self) -> TrainResult:
        if self.parts.device.type == "cpu":
            keep_freed_memory()  # no page faults taking back, at every step, what the last one freed
        # --deterministic (issue 13 item 4) turns cuDNN's timing-based algorithm choice off.
        with self._stop_signals(), cudnn_autotune(self.parts.device, self.config.deterministic):
            return self._run()

    @contextmanager
    def _stop_signals(self) -> Iterator[None]:
        """SIGTERM/SIGINT ask for a stop after the current step (handled in the main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(number: int, frame: object) -> None:
            if self.stop_requested is not None and number == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: the user really wants out now
            self.stop_requested = number

        previous = {number: signal.signal(number, request_stop) for number in STOP_SIGNALS}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _stop_agreed(self, boundary: bool) -> int | None:
        """The signal to stop for, agreed by every rank of a distributed job (all stop after the same step).
        The ranks agree every STOP_CHECK_EVERY steps and at a ``boundary`` (the same steps on every rank)."""
        requested = self.stop_requested or 0
        if is_distributed():
            if not boundary and self.position.global_step % STOP_CHECK_EVERY:
                return None
            flag = torch.full((1,), requested, device=self.parts.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            requested = int(flag.item())
        return requested or None

    def _run(self) -> TrainResult:
        config, parts = self.config, self.parts
        loader = parts.train_loader
        epochs = config.schedule.epochs
        if self._at_step_limit():  # e.g. resumed with the --max-steps it already reached
            return self._result(finished=False, note=(
                f"nothing to do: the run is already at step {self.position.global_step}, and --max-steps is "
                f"{config.max_steps} (raise --max-steps to train further)"))
        if self.position.epoch >= epochs:
            return self._result(finished=True, note=f"nothing to do: the run already finished all {epochs} epochs")
        skipped_in_a_row = 0
        interval = LogInterval()
        while self.position.epoch < epochs:
            epoch = self.position.epoch
            lr = lr_at(epoch + 1, config.optim.lr, config.schedule)
            momentum = momentum_at(epoch + 1, config.schedule)
            for group in parts.optimizer.param_groups:
                group["lr"] = lr
                if momentum is not None:  # cycled by the schedule (onecycle), Nesterov's included
                    group["momentum"] = momentum
            parts.method.train()
            bar = tqdm(total=len(loader), initial=self.position.batch, desc=f"epoch {epoch + 1}/{epochs}",
                       disable=not self.progress, dynamic_ncols=True, leave=False, file=sys.stderr)
            for batch in loader.batches(epoch, self.position.batch):
                interval.begin_step()
                if config.compile:
                    step_begins(config.compile_mode)
                self._ramp_attack()
                parts.optimizer.zero_grad(set_to_none=True)
                with parts.precision.autocast():
                    terms = parts.step_module(batch)
                loss = terms["loss"]
                if self.world.sharded:
                    loss = loss * parallel.share_weight(batch, self.world)
                parts.precision.backward(loss)
                if config.on_nan == "skip" and not self._step_is_finite(terms):
                    skipped_in_a_row += 1
                    self.log({"event": "skipped_step", "reason": "non-finite loss or gradient",
                              **dataclasses.asdict(self.position),
                              "terms": {name: float(value.detach()) for name, value in terms.items()}})
                    if skipped_in_a_row >= MAX_CONSECUTIVE_SKIPS:
                        raise TrainingDiverged(
                            f"{skipped_in_a_row} non-finite steps in a row in epoch {epoch + 1} up to step "
                            f"{self.position.global_step + 1}; the run has diverged; {self._last_good_checkpoint()}")
                else:
                    skipped_in_a_row = 0
                    parts.precision.step(parts.optimizer)
                    # Under torchrun the ranks' shares are summed: the global batch's mean.
                    interval.add(terms, len(batch) / batch.global_size if self.world.sharded else None)
                parts.method.after_step()  # a weight perturbation (AWP, ISEAT) is removed, step taken or not
                self.position.batch += 1
                self.position.global_step += 1
                if self.average is not None:  # after the perturbation is gone: only real weights are averaged
                    self.average.step(epoch, self.position.batch)
                bar.update(1)
                at_limit = self._at_step_limit()
                periodic = bool(config.checkpoint_every) and self.position.global_step % config.checkpoint_every == 0
                end_of_epoch = self.position.batch == len(loader)
                stop = self._stop_agreed(interval.steps == config.log_every or at_limit or periodic or end_of_epoch)
                if interval.steps == config.log_every or at_limit or stop or periodic or end_of_epoch:
                    # Before any checkpoint: the divergence check runs here, so a saved state is finite.
                    self._flush(interval, bar, lr)
                    interval = LogInterval()
                if at_limit or stop or (periodic and not end_of_epoch):
                    self._save_last()
                if stop:
                    bar.close()
                    name = STOP_SIGNALS.get(signal.Signals(stop), f"signal {stop}")
                    self.log({"event": "stopped", "reason": name, **dataclasses.asdict(self.position)})
                    # No rank exits before rank 0's checkpoint is complete: torchrun stops the whole job
                    # once one worker exits non-zero, and would kill rank 0 in the middle of the write.
                    parallel.barrier()
                    raise TrainingStopped(
                        f"{name} received: stopped after step {self.position.global_step} (epoch {epoch + 1}) with "
                        f"a checkpoint; continue with --resume --out {shlex.quote(str(self.run_dir))}", int(stop),
                        announce=self.world.is_main)
                if at_limit:
                    bar.close()
                    self.log({"event": "stopped", "reason": "max_steps", **dataclasses.asdict(self.position)})
                    return self._result(finished=False)
            bar.close()
            self._end_epoch(epoch, lr)
        return self._result(finished=True)

    def _step_is_finite(self, terms: dict[str, torch.Tensor]) -> bool:
        """Loss and every gradient finite on every rank (one host sync per step: only paid with --on-nan
        skip). With fp16 only the loss: the gradient scaler itself skips steps whose gradients overflowed."""
        total = terms["loss"].detach().float()
        if self.parts.precision.checks_gradients:
            for parameter in self.parts.method.parameters():
                if parameter.grad is not None:
                    total = total + parameter.grad.float().sum()
        return parallel.all_agree(bool(torch.isfinite(total)), self.parts.device)

    def _save_last(self) -> None:
        """last.pt, keeping the one it replaces as last.prev.pt (the fallback of --resume)."""
        if not self.world.is_main:
            return
        # last.pt becomes last.prev.pt only once the new one is complete: a failed write keeps both.
        # After a resume from last.prev.pt, the damaged last.pt is replaced and the good fallback kept.
        previous = self.run_dir / PREVIOUS if self.keep_last_as_previous else None
        self._save(self.run_dir / LAST, "last", keep_previous=previous)
        self.keep_last_as_previous = True

    def _last_good_checkpoint(self) -> str:
        return last_good_checkpoint(self.run_dir, self.keep_last_as_previous)

    def _at_step_limit(self) -> bool:
        return self.config.max_steps is not None and self.position.global_step >= self.config.max_steps

    def _ramp_attack(self) -> None:
        """During the eps warm-up, the attack of the coming step (a function of the position only)."""
        warmup = self.config.attack.eps_warmup_epochs
        method = self.parts.method
        if not warmup or method.attack is None:
            return
        steps_per_epoch = len(self.parts.train_loader)
        done = self.position.epoch * steps_per_epoch + self.position.batch + 1
        fraction = min(1.0, done / (warmup * steps_per_epoch))
        method.attack = dataclasses.replace(method.attack, eps=self.config.attack.eps * fraction,
                                            step_size=self.config.attack.step_size * fraction)

    def _flush(self, interval: LogInterval, bar: tqdm, lr: float) -> None:
        """The interval's terms into the epoch totals and the progress bar, after the divergence check."""
        # The clock is read once the device has finished the interval's work (the host runs ahead of a
        # GPU: without the sync, train_seconds would count launches).
        if self.parts.device.type == "cuda":
            torch.cuda.synchronize(self.parts.device)
        assert interval.started is not None  # a flush follows at least one step
        seconds = time.perf_counter() - interval.started
        steps = interval.steps
        values = interval.read(self.world.sharded)
        if not all(math.isfinite(value) for value in values.values()):
            shown = ", ".join(f"{name} {value / steps:.4g}" for name, value in values.items())
            raise TrainingDiverged(
                f"loss became non-finite in epoch {self.position.epoch + 1} by step {self.position.global_step} "
                f"({shown}); {self._last_good_checkpoint()}"
            )
        self.epoch_totals.add(values, steps, seconds)
        bar.set_postfix({"lr": f"{lr:.3g}", **{name: f"{value / steps:.4f}" for name, value in values.items()}},
                        refresh=False)

    def _end_epoch(self, epoch: int, lr: float) -> None:
        config = self.config
        epochs = config.schedule.epochs
        average = self.average
        if average is not None:
            average.end_epoch(epoch, (batch.x for batch in self.parts.train_loader.batches(epoch)))
        val_metrics = val_average = None
        if (epoch + 1) % config.val.every == 0 or epoch + 1 == epochs:
            val_metrics = self._validate(self.parts.method.student)
            if average is not None and average.updates:  # before its start the average is the raw weights
                val_average = self._validate(average.model)
        record = {
            "event": "epoch", "epoch": epoch + 1, "global_step": self.position.global_step, "lr": lr,
            "train": self.epoch_totals.means(), "train_seconds": round(self.epoch_totals.seconds, 3),
            "val": val_metrics,
            **({f"val_{config.average.kind}": val_average} if average is not None else {}),
            # At every epoch, so a run that collapses is flagged at the epoch it happens (validation may be rarer).
            "collapse": self.collapse_probe.measure(self.parts.method.student) if self.collapse_probe else None,
        }
        # best.pt follows the averaged weights once averaging has started (as Wang et al. 2023 select theirs).
        selected, weights = (val_average, config.average.kind) if val_average is not None else (val_metrics, "raw")
        improved = selected is not None and (self.best is None or selected["robust_acc"] > self.best["robust_acc"])
        if improved:
            self.best = {"epoch": epoch + 1, **selected, "weights": weights}
        self.position = Position(epoch + 1, 0, self.position.global_step)
        self.epoch_totals = EpochTotals()
        self._save_last()
        if improved:
            self._save(self.run_dir / BEST, "best", with_optimizer=False)
        if config.save_every and (epoch + 1) % config.save_every == 0:
            self._save(self.run_dir / f"epoch-{epoch + 1:04d}.pt", "epoch", with_optimizer=False)
        self.log(record)
        warning = collapse_warning(record["collapse"])
        if self.progress:
            summary = ", ".join(f"{name} {value:.4f}" for name, value in record["train"].items())
            for label, metrics in (("held-out", val_metrics), (f"{config.average.kind} held-out", val_average)):
                if metrics is not None:
                    summary += (f" | {label} clean {100 * metrics['clean_acc']:.2f}%"
                                f" PGD-{config.val.steps} {100 * metrics['robust_acc']:.2f}%")
            if warning:
                summary += f" | WARNING: {warning}"
            tqdm.write(f"epoch {epoch + 1}/{epochs}: {summary}", file=sys.stderr)
        elif warning and self.world.is_main:  # a collapse is said even without progress output
            print(f"warning: epoch {epoch + 1}/{epochs}: {warning}", file=sys.stderr)

    def _result(self, *, finished: bool, note: str | None = None) -> TrainResult:
        return TrainResult(self.run_dir, self.run_dir / LAST, self._best_path(), self.position, finished,
                           self.world.is_main, note)

    def _best_path(self) -> Path | None:
        path = self.run_dir / BEST
        return path if path.exists() else None


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True,
          argv: list[str] | None = None, dataset: Dataset | None = None) -> TrainResult:
    """Train as ``config`` says; with ``resume``, continue the run in ``config.out`` exactly.

    ``dataset`` trains on data built in Python (e.g. :func:`lbgat.data.from_tensors`) instead of
    reading ``config.data.name``; ``config.data.name`` is then set to the dataset's name.
    Under ``torchrun`` every process calls this; they train one model with DistributedDataParallel.
    """
    world = world_from_environment()
    device = device_for(world, resolve_device(config.device)) if world.sharded else torch.device("cpu")
    # Before the process group: --deterministic must set the cuBLAS workspace before CUDA starts.
    with (deterministic_algorithms(config.deterministic, resolve_device(config.device)), float32_mode(config.float32),
          process_group(world, device)):
        return _train(config, resume, progress, argv, dataset, world)


def _train(config: TrainConfig, resume: bool, progress: bool, argv: list[str] | None, dataset: Dataset | None,
           world: World) -> TrainResult:
    if dataset is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, name=dataset.name, root=None))
    method = validate(config, dataset_given=dataset is not None, world=world)
    # With the input shape known up front (every registered dataset serves exactly its registered shape),
    # model/input mismatches and run-directory clashes are reported before any data is read; a user's
    # folder is read first, since only its images tell their shape.
    image_shape = dataset.image_shape if dataset is not None else expected_image_shape(config)
    if image_shape is None:
        dataset = load_data(config)
        image_shape = dataset.image_shape
    resolved = resolve(config, image_shape, method)
    run_dir = Path(resolved.out)
    check_writable(run_dir, "run directory")
    # One writer per run directory (rank 0 of a torchrun job writes for all), taken before the checks of
    # what the folder holds so that two runs started at once cannot both pass them.
    with folder_lock(run_dir, "run directory", enabled=world.is_main):
        return _train_in(run_dir, config, resolved, method, resume, progress, argv, dataset, world)


_FLOAT32_FLAGS = {"ieee": "--ieee-fp32", "tf32": "--tf32", "default": "neither --ieee-fp32 nor --tf32"}


def _float32_hint(saved: dict, change: str) -> str:
    """A run from before torch's default became lbgat's was IEEE or TF32 by lbgat's choice: say how to go on."""
    flag = _FLOAT32_FLAGS.get(saved.get("float32", "")) if change.startswith("float32 ") else None
    return f"; resume with {flag} to compute as the run did" if flag else ""


def _train_in(run_dir: Path, config: TrainConfig, resolved: TrainConfig, method: MethodChoice, resume: bool,
              progress: bool, argv: list[str] | None, dataset: Dataset | None, world: World) -> TrainResult:
    checkpoint = check_run_dir(run_dir, resume)
    if dataset is None:
        dataset = load_data(config)
    extra = load_extra_data(resolved, dataset)
    if checkpoint is not None:
        # First: adding or dropping data.extra also changes the data.extra_fraction it resolves.
        check_same_extra(checkpoint.meta, extra)
        saved = upgrade_retired_settings(checkpoint.meta["config"])
        changed = most_meaningful_first(differences(saved, to_mapping(resolved)))
        if changed:
            raise ConfigError(f"--resume with settings that differ from the run: {changed[0]}"
                              f"{_float32_hint(saved, changed[0])}")
        unchecked = check_same_data(checkpoint.meta, dataset)
        if unchecked and world.is_main:
            print(f"warning: {unchecked}", file=sys.stderr)
    parts = build_parts(resolved, dataset, world, method, extra)
    check_disk_space(run_dir, parts)
    parallel.barrier()  # every rank has checked the run directory before rank 0 writes into it
    trainer = Trainer(parts, run_dir, progress=progress)
    if checkpoint is not None:
        trainer.restore(checkpoint)
        trainer.keep_last_as_previous = checkpoint.path.name != PREVIOUS
        trainer.log({"event": "resumed", **dataclasses.asdict(trainer.position), "processes": world.size,
                     "arithmetic": describe_arithmetic(resolved.precision, parts.device, float32=resolved.float32,
                                                       deterministic=resolved.deterministic)})
    else:
        write_run_files(run_dir, resolved, parts, argv)
        trainer.log({"event": "started", "config": to_mapping(resolved)})
    return trainer.run()
