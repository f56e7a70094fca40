"""``lbgat eval``: a model, a test split and a list of attacks -> report.json, report.md, per-sample flags.

Order of work on each process: the white-box (and transfer) attacks on its shard, then AutoAttack
on its shard (resumable), then the main process runs the sanity checks, merges every rank's
per-example outcomes, checks their consistency and writes the report.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks import NORMS
from ..attacks.half import batch_coupled, scaled_input_gradients
from ..checkpoints.averaged_weights import WEIGHTS
from ..checkpoints.checkpoint import sha256_of
from ..checkpoints.export_folder import is_export
from ..checkpoints.loading import LoadedModel, PlainStateDictError, load_for_eval
from ..config import threat_profile
from ..data import Dataset, load_dataset
from ..data.loader import DeviceLoader
from ..errors import ConfigError, LbgatError
from ..methods.plugin import plugin_summaries
from ..runtime.arithmetic import check_float32, describe_arithmetic, float32_mode
from ..runtime.precision import DTYPES, PRECISIONS, Precision
from ..runtime.provenance import code_version, environment
from ..runtime.world import World, device_for, process_group, resolve_device, world_from_environment
from ..storage.files import check_writable, failed_writes
from ..storage.locks import folder_lock
from .autoattack import AA_PACKAGE, AA_SOURCE, AAResult, AASettings, run_autoattack
from .checks import CheckInputs, run_checks
from .distributed import GATHER_TIMEOUT, gather, shard_indices
from .intervals import wilson_interval
from .report_files import check_out, write_report
from .specs import DEFAULT_ATTACKS, AttackSpec, parse_attacks
from .suite import box_violation, perturbation_size, run_suite

# Presets of the two protocols people compare against; explicit flags override them.
PROTOCOLS: dict[str, dict[str, Any]] = {
    # LBGAT/TRADES papers: eps 0.031 (not 8/255), PGD/CW at step 0.003, the full test set.
    "lbgat": {"eps": 0.031, "step_size": 0.003, "n": None, "attacks": "clean,pgd20,cw20,aa", "norm": "Linf"},
    # RobustBench leaderboard: eps 8/255, the first 10,000 test points, AutoAttack standard.
    "robustbench": {"eps": 8 / 255, "n": 10_000, "attacks": "clean,aa", "norm": "Linf", "aa_version": "standard"},
}
L2_DEFAULTS = {"eps": 0.5, "step_size": 0.1}  # the common CIFAR L2 threat model (RobustBench L2: 0.5)
LINF_TOLERANCE = 1e-6  # float rounding of x + eps
L2_TOLERANCE = 1e-5


class InconsistentEvaluation(LbgatError):
    """The adversarial inputs do not reproduce the reported accuracy, or leave the threat model."""

    exit_code = 3


@dataclass(frozen=True)
class EvalRequest:
    checkpoint: Path
    attacks: str | None = None  # default: the protocol's, else DEFAULT_ATTACKS
    n: int | None = None
    eps: float | None = None  # default: the protocol's, else the dataset's threat model
    step_size: float | None = None
    steps: int | None = None  # overrides the number in every pgd<K>/cw<K> name
    kappa: float = 50.0
    seed: int = 0
    batch_size: int = 200
    dataset: str | None = None  # default: the dataset the model was trained on
    data_root: str | None = None
    out: Path | None = None
    device: str = "auto"
    protocol: str | None = None  # lbgat | robustbench
    norm: str | None = None  # Linf (default) | L2
    model: str | None = None  # architecture of a plain state dict
    num_classes: int | None = None
    aa_version: str | None = None
    aa_attacks: str | None = None
    aa_batch_size: int | None = None  # default: --batch-size
    transfer_from: Path | None = None
    source_model: str | None = None
    check_n: int = 100
    precision: str = "fp32"  # fp32 is the evaluation of record; bf16/fp16 autocast only when asked
    # fp32 convolutions and matmuls on the GPU: torch's flags as they are (default), IEEE (ieee) or TF32 (tf32)
    float32: str = "default"
    weights: str = "auto"  # raw, or the average the run kept (ema, swa); auto: the average where it has started


@dataclass(frozen=True)
class Plan:
    """The request with every default resolved."""

    attacks: list[AttackSpec]
    eps: float
    step_size: float
    norm: str
    count: int
    aa: AASettings | None


def check_request(request: EvalRequest) -> None:
    """Reject impossible settings before loading anything."""
    if request.precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {request.precision!r}")
    check_float32(request.float32)
    if request.weights not in WEIGHTS:
        raise ConfigError(f"--weights must be one of {', '.join(WEIGHTS)}, got {request.weights!r}")
    if request.protocol is not None and request.protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {request.protocol!r}; known: {', '.join(PROTOCOLS)}")
    if request.eps is not None and not 0.0 <= request.eps <= (1.0 if request.norm != "L2" else 1e3):
        raise ConfigError(f"--eps must be in [0, 1] (images are in [0, 1]), got {request.eps}")
    if request.norm is not None and request.norm not in NORMS:
        raise ConfigError(f"--norm must be {' or '.join(NORMS)}, got {request.norm!r}")
    for flag, value, minimum in (("--step-size", request.step_size, None), ("--steps", request.steps, 1),
                                 ("--n", request.n, 1), ("--batch-size", request.batch_size, 1),
                                 ("--seed", request.seed, 0), ("--num-classes", request.num_classes, 2),
                                 ("--aa-batch-size", request.aa_batch_size, 1), ("--check-n", request.check_n, 0)):
        if value is None:
            continue
        if minimum is None and value <= 0:
            raise ConfigError(f"{flag} must be > 0, got {value}")
        if minimum is not None and value < minimum:
            raise ConfigError(f"{flag} must be >= {minimum}, got {value}")
    specs = parse_attacks(requested_attacks(request), eps=request.eps or 0.0, step_size=request.step_size or 1.0,
                          default_steps=20, kappa=request.kappa, steps=request.steps)
    if any(spec.kind == "transfer" for spec in specs) and request.transfer_from is None:
        raise ConfigError("a transfer-pgd attack needs --transfer-from SOURCE_CHECKPOINT")
    if request.aa_attacks and not any(spec.kind == "aa" for spec in specs):
        raise ConfigError("--aa-attacks given but 'aa' is not in --attacks")


def requested_attacks(request: EvalRequest) -> str:
    """The attack list asked for: --attacks, else the --protocol's, else the default."""
    return request.attacks or PROTOCOLS.get(request.protocol or "", {}).get("attacks") or DEFAULT_ATTACKS


def plan(request: EvalRequest, dataset: Dataset) -> Plan:
    preset = PROTOCOLS.get(request.protocol or "", {})
    norm = request.norm or preset.get("norm", "Linf")
    profile = threat_profile(dataset.image_shape[0])
    defaults = L2_DEFAULTS if norm == "L2" else {"eps": profile.eps, "step_size": profile.eval_step_size}
    eps = request.eps if request.eps is not None else preset.get("eps", defaults["eps"])
    step_size = request.step_size if request.step_size is not None else preset.get("step_size",
                                                                                    defaults["step_size"])
    attacks = requested_attacks(request)
    if request.transfer_from is not None and "transfer-pgd" not in attacks:
        attacks += ",transfer-pgd20"
    specs = parse_attacks(attacks, eps=eps, step_size=step_size, default_steps=profile.eval_steps,
                          kappa=request.kappa, steps=request.steps, norm=norm)
    n = request.n if request.n is not None else preset.get("n")
    count = len(dataset.test) if n is None else min(n, len(dataset.test))
    aa = None
    if any(spec.kind == "aa" for spec in specs):
        version = request.aa_version or preset.get("aa_version", "standard")
        chosen = tuple(name.strip() for name in request.aa_attacks.split(",")) if request.aa_attacks else None
        aa = AASettings(eps=eps, norm=norm, version=version, attacks=chosen, seed=request.seed,
                        batch_size=request.aa_batch_size or request.batch_size)
        aa.check()
    return Plan(specs, eps, step_size, norm, count, aa)


def default_out(checkpoint: Path) -> Path:
    """``eval-<name>`` beside the checkpoint file or export folder; never inside an export folder."""
    if checkpoint.name in ("", ".", ".."):  # "lbgat eval ." inside an export: name it after the folder
        checkpoint = Path(os.path.abspath(checkpoint))
    if checkpoint.is_dir():
        return checkpoint.parent / f"eval-{checkpoint.name or 'model'}"
    if is_export(checkpoint.parent):  # a file kept in an export folder: the report goes beside the folder
        folder = Path(os.path.abspath(checkpoint.parent))
        return folder.parent / f"eval-{folder.name}-{checkpoint.stem}"
    return checkpoint.parent / f"eval-{checkpoint.stem}"


def _load_models(request: EvalRequest, device: torch.device) -> tuple[LoadedModel, Dataset, LoadedModel | None]:
    """The model (lbgat checkpoint or plain state dict), its test data, and the transfer source."""
    if request.dataset is not None:
        dataset = load_dataset(request.dataset, request.data_root)
        channels, height, _ = dataset.image_shape
        loaded = load_for_eval(request.checkpoint, arch=request.model,
                               num_classes=request.num_classes or dataset.num_classes,
                               in_channels=channels, image_size=height, weights=request.weights)
    else:
        loaded = load_for_eval(request.checkpoint, arch=request.model, num_classes=request.num_classes,
                               weights=request.weights)
        if loaded.meta is None:
            raise ConfigError(f"{request.checkpoint} is a plain state dict: say which data to evaluate on with "
                              "--dataset (and --data-root)")
        trained_on = loaded.meta.get("dataset", {})
        if not trained_on.get("name"):
            raise ConfigError(f"{request.checkpoint} does not say which data it was trained on: give --dataset")
        image_size = loaded.meta.get("config", {}).get("data", {}).get("image_size")
        dataset = load_dataset(trained_on.get("name"), request.data_root or trained_on.get("root"),
                               image_size=image_size)
    spec = loaded.spec
    channels, height, width = dataset.image_shape
    if (spec.in_channels, spec.image_size, spec.image_size) != dataset.image_shape:
        raise ConfigError(f"{dataset.name} images are {channels}x{height}x{width}, but the model takes "
                          f"{spec.in_channels}x{spec.image_size}x{spec.image_size}")
    if dataset.num_classes != spec.num_classes:
        raise ConfigError(f"{dataset.name} has {dataset.num_classes} classes, the model {spec.num_classes}")
    source = None
    if request.transfer_from is not None:
        try:
            source = load_for_eval(request.transfer_from, arch=request.source_model, num_classes=spec.num_classes,
                                   in_channels=channels, image_size=height, device=device)
        except PlainStateDictError:
            raise ConfigError(f"--transfer-from {request.transfer_from} is a plain state dict: say which "
                              "architecture it is with --source-model") from None
        if source.spec.num_classes != spec.num_classes:
            raise ConfigError(f"the transfer source has {source.spec.num_classes} classes, the model "
                              f"{spec.num_classes}")
    loaded.model.to(device)
    if request.precision != "fp32":
        loaded = replace(loaded, model=AutocastModel(loaded.model, device, request.precision))
        if source is not None:
            source = replace(source, model=AutocastModel(source.model, device, request.precision))
    return loaded, dataset, source


class AutocastModel(nn.Module):
    """A model run under bf16/fp16 autocast, returning fp32 logits (evaluation in low precision, on request).

    Under fp16 its input gradients are computed at a per-example power-of-two scale and unscaled
    (:mod:`lbgat.attacks.half`), so every attack, AutoAttack's included, sees gradients that did not
    underflow in the fp16 backward.
    """

    def __init__(self, model: nn.Module, device: torch.device, precision: str) -> None:
        super().__init__()
        self.model = model
        self.precision = Precision(precision, device)

    @property
    def autocast_dtype(self) -> torch.dtype:
        return DTYPES[self.precision.name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.precision.autocast():
            if self.precision.name == "fp16":
                return scaled_input_gradients(self.model, x, per_example=not batch_coupled(self.model))
            return self.model(x).float()


def _aa_consistency(model: nn.Module, x: torch.Tensor, y: torch.Tensor, result: AAResult,
                    batch_size: int) -> dict[str, Any]:
    """Accuracy recomputed on the returned adversarial inputs, and their distance to the clean ones."""
    x_adv = result.x_adv.to(x.device)
    with torch.no_grad():
        predictions = torch.cat([model(x_adv[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]) \
            if len(x) else torch.zeros(0, dtype=torch.int64, device=x.device)
    recomputed = (predictions == y).cpu()
    return {"recomputed_correct": recomputed, "max_perturbation": perturbation_size(x_adv, x, result.settings.norm),
            "max_box_violation": box_violation(x_adv)}


def _evaluate_shard(request: EvalRequest, plan_: Plan, loaded: LoadedModel, dataset: Dataset,
                    source: LoadedModel | None, world: World, device: torch.device, out: Path, sha256: str,
                    progress: bool) -> dict[str, Any]:
    positions = shard_indices(plan_.count, request.batch_size, world)
    loader = DeviceLoader(dataset.test, batch_size=request.batch_size, seed=request.seed, device=device,
                          indices=positions)
    suite_specs = [spec for spec in plan_.attacks if spec.kind != "aa"]
    suite = run_suite(loaded.model, loader, suite_specs, progress=progress and world.is_main,
                      source=source.model if source else None)
    payload: dict[str, Any] = {"indices": positions, "outcomes": suite.outcomes, "seconds": suite.seconds}
    if plan_.aa is not None:
        x = dataset.test.images[positions].to(device).float().div_(255)
        y = dataset.test.labels[positions].to(device)
        name = "aa_state.pt" if not world.sharded else f"aa_state.rank{world.rank}-of-{world.size}.pt"
        context = {"model_sha256": sha256, "dataset": dataset.name, "examples": hashlib.sha256(
            positions.numpy().tobytes()).hexdigest(), "count": len(positions)}
        result = run_autoattack(loaded.model, x, y, plan_.aa, num_classes=loaded.spec.num_classes,
                                state_path=out / name, context=context, progress=progress)
        payload["aa"] = result
        payload["aa_consistency"] = _aa_consistency(loaded.model, x, y, result, plan_.aa.batch_size)
    return payload


def _check_inputs(request: EvalRequest, plan_: Plan, dataset: Dataset, device: torch.device) -> CheckInputs:
    count = min(max(request.check_n, 1), plan_.count)
    reference = strength_reference(plan_.attacks)
    steps, step_size = (reference.steps, reference.step_size) if reference else (20, plan_.step_size)
    return CheckInputs(dataset.test.images[:count].to(device).float().div_(255),
                       dataset.test.labels[:count].to(device), torch.arange(count, device=device),
                       plan_.eps, step_size, plan_.norm, request.seed, reference_steps=steps,
                       reference_attack=reference.name if reference else None)


def strength_reference(attacks: list[AttackSpec]) -> AttackSpec | None:
    """The attack the strength check tests: the report's PGD with the most steps (the first of equals)."""
    pgd_attacks = [spec for spec in attacks if spec.kind == "pgd"]
    return max(pgd_attacks, key=lambda spec: spec.steps) if pgd_attacks else None


_NOT_SAVED = ("the checkpoint is unchanged, and this evaluation's results were not saved: free some space, then run "
              "the evaluation again")


def evaluate_checkpoint(request: EvalRequest, *, progress: bool = True) -> tuple[dict[str, Any], Path]:
    """Run the request; returns the report and the folder it was written to (on the main process)."""
    check_request(request)
    out = request.out or default_out(Path(request.checkpoint))
    check_writable(out, "report folder")  # before any work, so no evaluation is lost to an unwritable folder
    check_out(out)  # and none to a file in the way that lbgat may not replace
    world = world_from_environment()
    device = device_for(world, resolve_device(request.device))
    # One writer per report folder: rank 0 writes the report of a sharded evaluation.
    with (folder_lock(out, "report folder", enabled=world.is_main), failed_writes(out, _NOT_SAVED),
          float32_mode(request.float32), process_group(world, device, GATHER_TIMEOUT)):
        loaded, dataset, source = _load_models(request, device)
        plan_ = plan(request, dataset)
        out.mkdir(parents=True, exist_ok=True)
        sha256 = sha256_of(loaded.path)
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        clock = time.perf_counter()
        payload = _evaluate_shard(request, plan_, loaded, dataset, source, world, device, out, sha256, progress)
        checks = None
        if world.is_main:
            aa_here = payload.get("aa")
            checks = run_checks(loaded.model, _check_inputs(request, plan_, dataset, device),
                                aa=aa_here, strength=request.check_n > 0)
        shards = gather(payload, world)
        if not world.is_main:
            return {}, out
        report, per_sample, indices = _merge(shards, plan_, request, world)
        report.update(_header(request, plan_, loaded, dataset, source, world, device, sha256, started,
                              time.perf_counter() - clock))
        report["checks"] = [check.to_dict() for check in checks or []]
        write_report(report, out, per_sample=per_sample, indices=indices)
    failures = [row for row in report["consistency"] if not row["ok"]]
    if failures:
        raise InconsistentEvaluation(f"report written to {out}, but it is INCONSISTENT: {failures[0]['problem']}")
    return report, out


def _merge(shards: list[dict[str, Any]], plan_: Plan, request: EvalRequest, world: World
           ) -> tuple[dict[str, Any], dict[str, torch.Tensor], torch.Tensor]:
    positions = torch.cat([shard["indices"] for shard in shards])
    order = torch.argsort(positions)
    indices = positions[order]
    per_sample: dict[str, torch.Tensor] = {}
    results: list[dict[str, Any]] = []
    consistency: list[dict[str, Any]] = []
    for spec in plan_.attacks:
        if spec.kind == "aa":
            row, flags, check = _merge_aa(shards, spec, order, world)
        else:
            outcomes = [shard["outcomes"][spec.name] for shard in shards]
            flags = torch.cat([outcome.correct for outcome in outcomes])[order]
            row = {"attack": spec.name, "description": spec.describe(), "accuracy": _mean(flags),
                   "correct": int(flags.sum()), "total": len(flags),
                   "seconds": round(max(outcome.seconds for outcome in outcomes), 3), **spec.to_dict()}
            check = _ball_check(spec.name, spec.eps, spec.norm, max(o.max_perturbation for o in outcomes),
                                max(o.max_box_violation for o in outcomes))
        interval = wilson_interval(row["correct"], row["total"])
        row["ci95"] = list(interval) if interval else None  # over the n test images (docs/evaluation.md)
        per_sample[spec.name] = flags
        results.append(row)
        consistency.append(check)
    return {"results": results, "consistency": consistency}, per_sample, indices


def _mean(flags: torch.Tensor) -> float:
    return float(flags.float().mean()) if len(flags) else float("nan")


def _ball_check(name: str, eps: float, norm: str, perturbation: float, box: float,
                recomputed: float | None = None, reported: float | None = None) -> dict[str, Any]:
    tolerance = LINF_TOLERANCE if norm == "Linf" else eps * L2_TOLERANCE + LINF_TOLERANCE
    problems = []
    if perturbation > eps + tolerance:
        problems.append(f"{name} inputs are up to {perturbation:.6g} from the clean ones ({norm}), beyond eps {eps:g}")
    if box > 0:
        problems.append(f"{name} inputs leave [0, 1] by up to {box:.3g}")
    if recomputed is not None and recomputed != reported:
        problems.append(f"{name} accuracy recomputed on its adversarial inputs is {100 * recomputed:.2f}%, "
                        f"the attack reported {100 * reported:.2f}%")
    row = {"attack": name, "max_perturbation": perturbation, "eps": eps, "norm": norm, "max_box_violation": box,
           "ok": not problems, "problem": "; ".join(problems) or None}
    if recomputed is not None:
        row.update({"recomputed_accuracy": recomputed, "reported_accuracy": reported})
    return row


def _merge_aa(shards: list[dict[str, Any]], spec: AttackSpec, order: torch.Tensor, world: World
              ) -> tuple[dict[str, Any], torch.Tensor, dict[str, Any]]:
    results: list[AAResult] = [shard["aa"] for shard in shards]
    flags = torch.cat([result.robust for result in results])[order]
    recomputed = torch.cat([shard["aa_consistency"]["recomputed_correct"] for shard in shards])[order]
    total = len(flags)
    cascade = []
    for step_number, attack in enumerate(results[0].attacks):
        steps = [result.cascade[step_number] for result in results]
        robust = sum(step.robust for step in steps)
        cascade.append({"attack": attack, "robust": robust, "robust_accuracy": robust / total if total else None,
                        "seconds": round(max(step.seconds for step in steps), 3),
                        "skipped": all(step.skipped for step in steps)})
    settings = results[0].settings
    row = {"attack": "aa", "description": spec.describe(), "accuracy": _mean(flags), "correct": int(flags.sum()),
           "total": total, "seconds": round(sum(step["seconds"] for step in cascade), 3), **spec.to_dict(),
           "clean_accuracy": _mean(torch.cat([result.clean_correct for result in results])[order]),
           "cascade": cascade,
           "autoattack": {
               "package": AA_PACKAGE, "source": AA_SOURCE, "version": settings.version,
               "attacks": results[0].attacks, "seed": settings.seed, "batch_size": settings.batch_size,
               "n_target_classes": results[0].n_target_classes,
               "resumed_after": results[0].resumed_attacks,
               "how": ("one process" if not world.sharded else
                       f"sharded over {world.size} processes by whole batches; AutoAttack reseeds on every batch "
                       "of still-robust points, so per-example results are statistically, not bitwise, equal to "
                       "a single-process run"),
           }}
    check = _ball_check("aa", settings.eps, settings.norm,
                        max(shard["aa_consistency"]["max_perturbation"] for shard in shards),
                        max(shard["aa_consistency"]["max_box_violation"] for shard in shards),
                        recomputed=_mean(recomputed), reported=_mean(flags))
    if not torch.equal(recomputed, flags) and check["ok"]:
        check.update(ok=False, problem="aa per-example flags differ from the outcomes recomputed on its inputs")
    return row, flags, check


def _arithmetic(request: EvalRequest, device: torch.device) -> dict[str, str]:
    arithmetic = describe_arithmetic(request.precision, device, float32=request.float32, deterministic=False)
    del arithmetic["deterministic"]  # a training setting: evaluation has no --deterministic
    if request.precision != "fp32":
        arithmetic["dtype"] = f"{request.precision} autocast (asked for; fp32 is the evaluation of record)"
    return arithmetic


def _header(request: EvalRequest, plan_: Plan, loaded: LoadedModel, dataset: Dataset, source: LoadedModel | None,
            world: World, device: torch.device, sha256: str, started: str, seconds: float) -> dict[str, Any]:
    meta = loaded.meta or {}
    header: dict[str, Any] = {
        "lbgat_report": 2,
        "started": started,
        "seconds": round(seconds, 3),
        "checkpoint": {
            "path": str(loaded.path), "sha256": sha256, "format": loaded.kind, "kind": meta.get("kind"),
            "weights": loaded.weights, "weights_description": loaded.weights_description,
            "arch": loaded.spec.arch, "num_classes": loaded.spec.num_classes,
            "method": meta.get("config", {}).get("method", {}).get("name"),
            "plugins": plugin_summaries(meta.get("config", {}).get("method", {})),
            "epochs_done": meta.get("position", {}).get("epoch"),
            "global_step": meta.get("position", {}).get("global_step"),
            "trained_with": meta.get("code_version"),
        },
        "protocol": {
            "preset": request.protocol, "dataset": dataset.name, "data_source": dataset.source, "split": "test",
            "data_fingerprint": dataset.test.fingerprint,
            "n": plan_.count, "n_available": len(dataset.test),
            "examples": f"the first {plan_.count} of the test split",
            "eps": plan_.eps, "norm": plan_.norm, "seed": request.seed, "batch_size": request.batch_size,
            "bn_mode": "eval", "device": str(device),
            # dtype, tf32, conv, matmul: read back from torch, so they say what ran (float32: the setting).
            **_arithmetic(request, device),
            "processes": world.size,
            "sharding": "one process" if not world.sharded else (
                f"{world.size} processes; global batch b on rank b mod {world.size} (clean/FGSM/PGD/CW identical "
                "to one process)"),
            "random_start": "uniform in the eps-ball, per example, a function of (seed, example index)",
            "reported_iterate": "final (no best-of-iterations, no restarts)",
            "check_n": min(request.check_n, plan_.count),
        },
        "code_version": code_version(),
        "environment": environment(),
    }
    if meta.get("exported_from"):  # an `lbgat export` folder: the checkpoint it was exported from
        header["checkpoint"]["exported_from"] = meta["exported_from"]
    if source is not None:
        header["transfer"] = {"source": str(source.path), "source_sha256": sha256_of(source.path),
                              "source_arch": source.spec.arch, "source_format": source.kind,
                              "source_weights": source.weights}
    if plan_.aa is not None:
        header["protocol"]["autoattack"] = asdict(replace(plan_.aa, attacks=list(plan_.aa.attacks or ()) or None))
    return header
