"""AutoAttack through the official attack code, with a cascade the project can resume.

The attacks are those of the PyPI package ``pyautoattack==0.2.0``, whose attack modules are
fra31/auto-attack at commit a392200 (only the imports differ). The package runs its cascade
(each attack on the points still robust, in batches) inside one call, and its own resumable
state keeps the robust flags but not the adversarial inputs found before a restart. So the
cascade is driven here one attack at a time: each call runs the official
``run_standard_evaluation`` with that single attack on the still-robust points, in their original
order and with the same batch size, which reproduces the official cascade's batches (and so its
per-batch reseeding) exactly. After every attack the robust flags, the adversarial inputs found so
far and the cascade are written atomically, so a killed run continues where it stopped and still
returns every adversarial input.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks import NORMS, model_mode
from ..checkpoints.checkpoint import read_tensors_file, save_tensors_file
from ..errors import ConfigError

AA_PACKAGE = "pyautoattack 0.2.0"
AA_SOURCE = "attack modules of fra31/auto-attack at commit a392200 (packaged as pyautoattack 0.2.0)"
AA_VERSIONS = ("standard", "plus", "rand", "custom")
AA_ATTACKS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
AA_LOGGER = "auto-attack"
STATE_FORMAT = 1


@dataclass(frozen=True)
class AASettings:
    """Everything that decides an AutoAttack result (besides the model and the images)."""

    eps: float
    norm: str = "Linf"
    version: str = "standard"
    attacks: tuple[str, ...] | None = None  # only for version "custom"
    seed: int = 0
    batch_size: int = 500

    def check(self) -> None:
        if self.version not in AA_VERSIONS:
            raise ConfigError(f"AutoAttack version must be one of {', '.join(AA_VERSIONS)}, got {self.version!r}")
        if self.version == "custom":
            if not self.attacks:
                raise ConfigError("AutoAttack version 'custom' needs --aa-attacks, e.g. apgd-ce,square")
            unknown = [name for name in self.attacks if name not in AA_ATTACKS]
            if unknown:
                raise ConfigError(f"unknown AutoAttack attack {unknown[0]!r}; known: {', '.join(AA_ATTACKS)}")
        elif self.attacks:
            raise ConfigError(f"--aa-attacks only applies to --aa-version custom, not {self.version!r}")
        if self.norm not in NORMS:
            raise ConfigError(f"AutoAttack norm must be {' or '.join(NORMS)}, got {self.norm!r}")
        if self.batch_size < 1:
            raise ConfigError(f"AutoAttack batch size must be >= 1, got {self.batch_size}")


@dataclass
class CascadeStep:
    attack: str
    robust: int  # still robust after this attack
    total: int
    seconds: float
    skipped: bool = False  # no robust point was left to attack

    @property
    def robust_accuracy(self) -> float:
        return self.robust / self.total if self.total else float("nan")


@dataclass
class AAResult:
    settings: AASettings
    attacks: list[str]
    clean_correct: torch.Tensor  # bool (N,)
    robust: torch.Tensor  # bool (N,): correct after every attack
    x_adv: torch.Tensor  # (N, C, H, W): the adversarial input where one was found, else the clean image
    cascade: list[CascadeStep]
    n_target_classes: int
    warnings: list[str] = field(default_factory=list)
    resumed_attacks: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return float(self.robust.float().mean()) if self.robust.numel() else float("nan")


class _WarningCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def collect_aa_warnings() -> Iterator[list[str]]:
    """The warnings AutoAttack's own checks log while the block runs."""
    logger = logging.getLogger(AA_LOGGER)
    collector = _WarningCollector()
    logger.addHandler(collector)
    propagate, logger.propagate = logger.propagate, False  # keep them out of the user's console
    try:
        yield collector.messages
    finally:
        logger.removeHandler(collector)
        logger.propagate = propagate


def build_autoattack(model: nn.Module, settings: AASettings, num_classes: int, device: torch.device):
    """The official AutoAttack object, configured for ``settings`` (version parameters included)."""
    from pyautoattack import AutoAttack

    attacks = list(settings.attacks) if settings.version == "custom" else None
    adversary = AutoAttack(model, attacks=attacks, device=device, eps=settings.eps, norm=settings.norm,
                           seed=settings.seed, version=settings.version)
    # The targeted attacks use 9 target classes, which needs at least 10 classes; with fewer, use all
    # the others (the official code would fail its n_classes check).
    targets = min(9, num_classes - 1)
    adversary.apgd_targeted.n_target_classes = min(adversary.apgd_targeted.n_target_classes, targets)
    adversary.fab.n_target_classes = min(adversary.fab.n_target_classes, targets)
    return adversary


def _fingerprint(settings: AASettings, context: dict[str, Any], attacks: list[str], targets: int) -> str:
    return json.dumps({"settings": asdict(settings), "attacks": attacks, "n_target_classes": targets, **context},
                      sort_keys=True)


def _predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def _load_state(path: Path, fingerprint: str) -> dict[str, Any] | None:
    if not path.exists():
        return None
    state = read_tensors_file(path)
    if not isinstance(state, dict) or state.get("lbgat_aa_state") != STATE_FORMAT:
        raise ConfigError(f"{path} is not an AutoAttack state of this lbgat version; delete it to start over")
    if state["fingerprint"] != fingerprint:
        raise ConfigError(f"{path} belongs to an AutoAttack run with other settings, model or images; "
                          "delete it or choose another --out")
    return state


def _save_state(path: Path, fingerprint: str, clean: torch.Tensor, robust: torch.Tensor, x_adv: torch.Tensor,
                cascade: list[CascadeStep]) -> None:
    save_tensors_file(path, {
        "lbgat_aa_state": STATE_FORMAT, "fingerprint": fingerprint, "clean": clean.cpu(), "robust": robust.cpu(),
        "x_adv": x_adv.cpu(), "cascade": json.dumps([asdict(step) for step in cascade]),
    })


def run_autoattack(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: AASettings, *, num_classes: int,
    state_path: Path | None = None, context: dict[str, Any] | None = None, progress: bool = True,
) -> AAResult:
    """AutoAttack on (x, y) (all on the model's device), resuming from ``state_path`` if it holds a
    state of the same run (``context`` identifies the model and images, e.g. hashes and indices)."""
    settings.check()
    device = x.device
    with model_mode(model, "eval"), collect_aa_warnings() as warnings:
        adversary = build_autoattack(model, settings, num_classes, device)
        attacks = list(adversary.attacks_to_run)
        targets = adversary.apgd_targeted.n_target_classes
        fingerprint = _fingerprint(settings, context or {}, attacks, targets)
        state = _load_state(state_path, fingerprint) if state_path is not None else None
        if state is None:
            clean = _predict(model, x, settings.batch_size) == y
            robust, x_adv, cascade = clean.clone(), x.detach().clone(), []
            if state_path is not None:
                _save_state(state_path, fingerprint, clean, robust, x_adv, cascade)
        else:
            clean, robust = state["clean"].to(device), state["robust"].to(device)
            x_adv = state["x_adv"].to(device)
            cascade = [CascadeStep(**step) for step in json.loads(state["cascade"])]
        resumed = [step.attack for step in cascade]
        for attack in attacks[len(cascade):]:
            cascade.append(_run_one(adversary, attack, x, y, robust, x_adv, settings.batch_size))
            if progress:
                step = cascade[-1]
                print(f"  AutoAttack {attack}: {step.robust}/{step.total} robust ({step.seconds:.1f} s)",
                      file=sys.stderr, flush=True)
            if state_path is not None:
                _save_state(state_path, fingerprint, clean, robust, x_adv, cascade)
        _check_square(clean, cascade)
    return AAResult(settings, attacks, clean.cpu(), robust.cpu(), x_adv.cpu(), cascade, targets, list(warnings),
                    resumed)


def _run_one(adversary, attack: str, x: torch.Tensor, y: torch.Tensor, robust: torch.Tensor,
             x_adv: torch.Tensor, batch_size: int) -> CascadeStep:
    """One attack of the cascade on the still-robust points; updates ``robust`` and ``x_adv`` in place."""
    indices = torch.nonzero(robust).flatten()
    if len(indices) == 0:
        return CascadeStep(attack, 0, len(robust), 0.0, skipped=True)
    adversary.attacks_to_run = [attack]
    started = time.perf_counter()
    found, predicted = adversary.run_standard_evaluation(x[indices], y[indices], batch_size=batch_size)
    seconds = time.perf_counter() - started
    fooled = predicted.to(y.device) != y[indices]
    robust[indices[fooled]] = False
    x_adv[indices[fooled]] = found[fooled].to(x_adv.device)
    return CascadeStep(attack, int(robust.sum()), len(robust), seconds)


def _check_square(clean: torch.Tensor, cascade: list[CascadeStep]) -> None:
    """AutoAttack's "Square beats the white-box attacks" check, on the whole cascade."""
    from pyautoattack import checks

    accuracies = {"clean": float(clean.float().mean())}
    accuracies.update({step.attack: step.robust_accuracy for step in cascade if not step.skipped})
    checks.check_square_sr(accuracies, logger=logging.getLogger(AA_LOGGER))
