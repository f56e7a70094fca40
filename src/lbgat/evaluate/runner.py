"""``lbgat eval``: a checkpoint, a test split and a list of attacks -> report.json and report.md."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_checkpoint, load_state_strict, sha256_of
from ..config import threat_profile
from ..data import load_dataset
from ..data.loader import DeviceLoader
from ..errors import ConfigError
from ..provenance import code_version, environment
from ..train.setup import resolve_device
from .report import write_report
from .specs import parse_attacks
from .suite import run_suite


@dataclass(frozen=True)
class EvalRequest:
    checkpoint: Path
    attacks: str = "clean,pgd20"
    n: int | None = None
    eps: float | None = None  # default: the dataset's threat model (0.031 on CIFAR, 0.3 on MNIST)
    step_size: float | None = None
    steps: int | None = None  # overrides the number in every pgd<K>/cw<K> name
    kappa: float = 50.0
    seed: int = 0
    batch_size: int = 200
    dataset: str | None = None  # default: the dataset the model was trained on
    data_root: str | None = None
    out: Path | None = None
    device: str = "auto"


def check_request(request: EvalRequest) -> None:
    """Reject impossible settings before loading anything."""
    if request.eps is not None and not 0.0 <= request.eps <= 1.0:
        raise ConfigError(f"--eps must be in [0, 1] (images are in [0, 1]), got {request.eps}")
    if request.step_size is not None and request.step_size <= 0:
        raise ConfigError(f"--step-size must be > 0, got {request.step_size}")
    if request.steps is not None and request.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {request.steps}")
    if request.n is not None and request.n < 1:
        raise ConfigError(f"--n must be >= 1, got {request.n}")
    if request.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {request.batch_size}")
    if request.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {request.seed}")
    # Parse early so that a typo in --attacks fails before the checkpoint and data are read.
    parse_attacks(request.attacks, eps=request.eps or 0.0, step_size=request.step_size or 1.0, default_steps=20,
                  kappa=request.kappa, steps=request.steps)


def default_out(checkpoint: Path) -> Path:
    return checkpoint.parent / f"eval-{checkpoint.stem}"


def evaluate_checkpoint(request: EvalRequest, *, progress: bool = True) -> tuple[dict[str, Any], Path]:
    """Run the request; returns the report and the folder it was written to."""
    check_request(request)
    device = resolve_device(request.device)
    checkpoint = load_checkpoint(request.checkpoint)
    spec = checkpoint.student_spec
    model = spec.build()
    load_state_strict(model, checkpoint.network_state("student"), checkpoint.path)
    model.to(device).eval()

    trained_on = checkpoint.meta.get("dataset", {})
    dataset_name = request.dataset or trained_on.get("name")
    data_root = request.data_root or trained_on.get("root")
    image_size = checkpoint.meta.get("config", {}).get("data", {}).get("image_size")
    dataset = load_dataset(dataset_name, data_root, image_size=image_size)
    if dataset.image_shape != (spec.in_channels, spec.image_size, spec.image_size):
        raise ConfigError(f"{dataset_name} images are {'x'.join(map(str, dataset.image_shape))}, but the model was "
                          f"trained on {spec.in_channels}x{spec.image_size}x{spec.image_size}")
    if dataset.num_classes != spec.num_classes:
        raise ConfigError(f"{dataset_name} has {dataset.num_classes} classes, the model {spec.num_classes}")

    profile = threat_profile(dataset.image_shape[0])
    eps = profile.eps if request.eps is None else request.eps
    step_size = profile.eval_step_size if request.step_size is None else request.step_size
    specs = parse_attacks(request.attacks, eps=eps, step_size=step_size, default_steps=profile.eval_steps,
                          kappa=request.kappa, steps=request.steps)
    total = len(dataset.test)
    count = total if request.n is None else min(request.n, total)
    loader = DeviceLoader(dataset.test, batch_size=request.batch_size, seed=request.seed, device=device,
                          indices=torch.arange(count))
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    result = run_suite(model, loader, specs, progress=progress)

    report = {
        "lbgat_report": 1,
        "started": started,
        "seconds": round(result.seconds, 3),
        "checkpoint": {
            "path": str(checkpoint.path), "sha256": sha256_of(checkpoint.path), "kind": checkpoint.meta.get("kind"),
            "arch": spec.arch, "num_classes": spec.num_classes, "method": checkpoint.meta["config"]["method"]["name"],
            "epochs_done": checkpoint.meta.get("position", {}).get("epoch"),
            "global_step": checkpoint.meta.get("position", {}).get("global_step"),
            "trained_with": checkpoint.meta.get("code_version"),
        },
        "protocol": {
            "dataset": dataset.name, "data_source": dataset.source, "split": "test",
            "n": count, "n_available": total, "examples": f"the first {count} of the test split",
            "eps": eps, "norm": "Linf", "seed": request.seed, "batch_size": request.batch_size,
            "bn_mode": "eval", "dtype": "float32", "device": str(device),
            "random_start": "uniform in the eps-ball, per example, a function of (seed, example index)",
            "reported_iterate": "final (no best-of-iterations, no restarts)",
        },
        "results": [
            {"attack": name, "description": outcome.spec.describe(), "accuracy": outcome.accuracy,
             "correct": outcome.count, "total": outcome.total, "seconds": round(outcome.seconds, 3),
             **outcome.spec.to_dict()}
            for name, outcome in result.outcomes.items()
        ],
        "code_version": code_version(),
        "environment": environment(),
    }
    out = request.out or default_out(checkpoint.path)
    write_report(report, out, per_sample={name: outcome.correct for name, outcome in result.outcomes.items()},
                 indices=result.indices)
    return report, out
