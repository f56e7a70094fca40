"""Checkpoint files: written atomically, read without executing code.

A checkpoint is a ``torch.save`` of plain containers only: tensors, numbers, strings, lists and
dicts, with the metadata as a JSON string. It is read with ``torch.load(weights_only=True)``, which
refuses any pickled object that would run code. Layout::

    {"lbgat_checkpoint": 1, "meta": "<json>", "state": {"student.<key>": tensor, "teacher.<key>": ...,
     "average.<student key>": ... (a run with weight averaging)},
     "optimizer": <optimizer state_dict>  (resumable checkpoints only)}
"""

from __future__ import annotations

import hashlib
import json
import pickle
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, UnsafeCheckpointError
from ..storage import tamper_check
from ..storage.files import atomic_file
from . import averaged_weights, checkpoint_checks
from .model_spec import ModelSpec

FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    meta: dict[str, Any]
    state: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    path: Path

    def network_state(self, prefix: str) -> dict[str, torch.Tensor]:
        """The state dict of one network (``"student"`` or ``"teacher"``) without its prefix."""
        start = prefix + "."
        return {key[len(start):]: value for key, value in self.state.items() if key.startswith(start)}

    @property
    def student_spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.meta["student"])


def save_checkpoint(path: Path, meta: dict[str, Any], state: dict[str, torch.Tensor],
                    optimizer: dict[str, Any] | None = None, *, keep_previous: Path | None = None) -> None:
    """Write atomically: a temporary file in the same folder, fsync, then rename over ``path`` (an
    existing ``path`` becomes ``keep_previous`` only once the new file is complete)."""
    payload: dict[str, Any] = {"lbgat_checkpoint": FORMAT_VERSION, "meta": json.dumps(meta), "state": state}
    if optimizer is not None:
        payload["optimizer"] = optimizer
    save_tensors_file(path, payload, keep_previous=keep_previous)


def save_tensors_file(path: Path, payload: dict[str, Any], *, keep_previous: Path | None = None) -> None:
    """``torch.save`` of plain containers, atomically (see :func:`lbgat.storage.files.atomic_file`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, keep_previous=keep_previous) as file:
        try:
            torch.save(payload, file)
        except RuntimeError as error:
            # torch's zip writer turns a failed write (a full disk) into a RuntimeError as it closes;
            # the OSError it interrupted says what happened.
            if isinstance(error.__context__, OSError):
                raise error.__context__ from None
            raise


def check_checkpoint_path(path: Path, what: str = "checkpoint") -> None:
    """``path`` is a regular file (a folder or a FIFO is named as such, and never opened)."""
    if path.is_dir():
        raise CheckpointError(f"{what} {path} is a directory, not a checkpoint file")
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is not a regular file")


def read_tensors_file(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` with one-line errors for missing, damaged or unsafe files.

    A file whose pickle names a Python global that is not allowed raises :class:`UnsafeCheckpointError`
    (tampering); anything else that cannot be read raises :class:`CheckpointError` (damage).
    """
    path = Path(path)
    check_checkpoint_path(path)
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols before refusing a file; the refusal says it all.
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = tamper_check.refused_global(str(error), path)
        if refused is not None:
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it contains pickled code or objects, not just tensors "
                f"(it names the Python global {refused}, which weights-only loading does not allow)"
            ) from None
        detail = tamper_check.unpickling_detail(str(error), error.__context__)
        raise CheckpointError(f"checkpoint {path} is damaged or not a PyTorch file ({detail})") from None
    except Exception as error:  # noqa: BLE001 - whatever torch raises on bytes it cannot parse is damage
        detail = tamper_check.brief(str(error)) if str(error).strip() else ""
        if not isinstance(error, RuntimeError):  # torch's own errors say what they are; KeyError('101') does not
            detail = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
        raise CheckpointError(f"checkpoint {path} is damaged or truncated ({detail})") from None


_PLAIN_HINT = "a plain state dict? load it with --model ARCH"


def load_checkpoint(path: str | Path, *, not_lbgat_hint: str = _PLAIN_HINT) -> Checkpoint:
    """A checkpoint written by lbgat (see :func:`save_checkpoint`); ``not_lbgat_hint`` ends the refusal of
    any other file."""
    path = Path(path)
    return checkpoint_from_payload(read_tensors_file(path), path, not_lbgat_hint)


def checkpoint_from_payload(payload: object, path: Path, not_lbgat_hint: str = _PLAIN_HINT) -> Checkpoint:
    if not isinstance(payload, dict) or "lbgat_checkpoint" not in payload:
        raise CheckpointError(f"{path} is not an lbgat checkpoint ({not_lbgat_hint})")
    if payload["lbgat_checkpoint"] != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {payload['lbgat_checkpoint']}, expected {FORMAT_VERSION}")
    try:
        meta = json.loads(payload.get("meta"))
    except (TypeError, ValueError, RecursionError):
        raise CheckpointError(f"checkpoint {path} has unreadable metadata") from None
    state = checkpoint_checks.check_state(payload.get("state"), path)
    meta = checkpoint_checks.check_meta(meta, path)
    averaged_weights.check_average(meta, state, path)
    return Checkpoint(meta=meta, state=state, optimizer=payload.get("optimizer"), path=path)


def require_resumable(checkpoint: Checkpoint) -> Checkpoint:
    """``checkpoint`` if ``--resume`` can restore everything from it: position, running sums,
    optimiser and RNG state, all finite; else a one-line :class:`CheckpointError`."""
    checkpoint_checks.check_resumable(checkpoint.meta, checkpoint.optimizer, checkpoint.state, checkpoint.path)
    return checkpoint


def key_mismatch(expected: Iterable[str], given: Iterable[str]) -> str | None:
    """``"missing keys: a, b; unexpected keys: c"`` (at most five of each), or None when the sets agree."""
    result_missing = sorted(set(expected) - set(given))
    result_unexpected = sorted(set(given) - set(expected))
    if not (result_missing or result_unexpected):
        return None

    def listing(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
    parts = []
    if result_missing:
        parts.append(f"missing keys: {listing(result_missing)}")
    if result_unexpected:
        parts.append(f"unexpected keys: {listing(result_unexpected)}")
    return "; ".join(parts)


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """load_state_dict(strict=True), with missing/unexpected keys listed in one line."""
    problem = key_mismatch(model.state_dict(), state)
    if problem:
        raise CheckpointError(f"{source} does not fit the model: {problem}")
    expected = model.state_dict()
    mismatched = [key for key in expected if state[key].shape != expected[key].shape]
    if mismatched:
        def shape(tensor: torch.Tensor) -> str:
            return "x".join(map(str, tensor.shape)) or "scalar"
        shown = "; ".join(f"{key} is {shape(state[key])} in the file, {shape(expected[key])} in the model"
                          for key in mismatched[:3])
        more = f" (+{len(mismatched) - 3} more)" if len(mismatched) > 3 else ""
        only_the_classifier = set(mismatched) <= set(list(expected)[-2:])
        hint = " (wrong --num-classes?)" if only_the_classifier else ""
        raise CheckpointError(f"{source} does not fit the model: shape mismatch: {shown}{more}{hint}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())
        raise CheckpointError(f"{source} does not fit the model: {detail[:300]}") from None


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
