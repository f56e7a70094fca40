"""An exported model folder (written by ``lbgat export``), and reading it back.

Layout::

    DIR/model.safetensors   the student's weights in the official key layout of its architecture
                            (lbgat.models.official), with what rebuilds it in the metadata header
    DIR/README.md           the model card
    DIR/config.yaml         the resolved settings of the run that trained it

safetensors holds raw tensors and a JSON header, so reading it runs no code. The header's
metadata (strings only) holds the architecture, classes, input shape, normalisation, key layout,
lbgat version and the source checkpoint's sha256 as plain keys, and the training record (config,
dataset, position, code version) as JSON under ``lbgat_meta``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint_checks, pickle_safety
from .checkpoint import ModelSpec, check_checkpoint_path, key_mismatch, load_state_strict
from .errors import CheckpointError

WEIGHTS = "model.safetensors"
CARD = "README.md"
CONFIG = "config.yaml"
FORMAT = "lbgat-export"
FORMAT_VERSION = "1"
# The metadata keys every export has (besides lbgat_meta and the "format": "pt" safetensors convention).
REQUIRED_KEYS = ("lbgat_export", "arch", "num_classes", "input_shape", "normalization", "key_layout",
                 "lbgat_version", "checkpoint_sha256")


def is_export(folder: Path) -> bool:
    """Whether ``folder`` looks like an export (holds model.safetensors)."""
    return folder.is_dir() and (folder / WEIGHTS).exists()


def export_metadata(spec: ModelSpec, layout_name: str, meta: dict[str, Any], *, checkpoint_sha256: str,
                    checkpoint_name: str, version: str) -> dict[str, str]:
    """The safetensors metadata of an export: plain keys a person or another tool reads directly, and the
    training record as JSON."""
    normalization = "none" if spec.mean is None else json.dumps({"mean": spec.mean, "std": spec.std})
    record = {key: meta.get(key) for key in ("kind", "config", "teacher", "dataset", "position", "best",
                                             "code_version")}
    return {
        "format": "pt",  # the convention of other safetensors writers (e.g. Hugging Face)
        "lbgat_export": FORMAT_VERSION,
        "arch": spec.arch,
        "num_classes": str(spec.num_classes),
        "input_shape": json.dumps([spec.in_channels, spec.image_size, spec.image_size]),
        "input_range": "[0, 1]",
        "normalization": normalization,
        "key_layout": layout_name,
        "lbgat_version": version,
        "checkpoint_sha256": checkpoint_sha256,
        "checkpoint_name": checkpoint_name,
        "dataset": str(meta.get("dataset", {}).get("name")),
        "method": str(meta.get("config", {}).get("method", {}).get("name")),
        "lbgat_meta": json.dumps(record, allow_nan=False),
    }


@dataclass
class LoadedExport:
    model: nn.Module
    spec: ModelSpec
    weights: Path  # DIR/model.safetensors
    meta: dict[str, Any]  # shaped as a checkpoint's metadata, plus "exported_from"


def not_an_export(folder: Path) -> CheckpointError:
    """The one line for a folder given where a checkpoint or an export belongs."""
    hint = f"; a run folder? give {folder / 'last.pt'}" if (folder / "last.pt").exists() else ""
    return CheckpointError(f"checkpoint {folder} is a directory, not a checkpoint file, and not an lbgat export "
                           f"(it has no {WEIGHTS}){hint}")


def _read(weights: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    from safetensors import safe_open

    check_checkpoint_path(weights, "exported weights")
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as file:
            metadata = file.metadata() or {}
            tensors = {key: file.get_tensor(key) for key in file.keys()}
    except Exception as error:  # noqa: BLE001 - safetensors' own error type for a damaged header or body
        detail = pickle_safety.brief(str(error)) or type(error).__name__
        raise CheckpointError(f"{weights} is damaged or not a safetensors file ({detail})") from None
    return metadata, tensors


def _spec_and_meta(metadata: dict[str, str], weights: Path) -> tuple[ModelSpec, dict[str, Any]]:
    def malformed(detail: str) -> CheckpointError:
        return CheckpointError(f"{weights} is not an lbgat export: {detail}")

    if metadata.get("lbgat_export") is None:
        raise malformed("its metadata has no 'lbgat_export' entry (written by another tool?)")
    if metadata["lbgat_export"] != FORMAT_VERSION:
        raise CheckpointError(f"{weights} has export format {metadata['lbgat_export']!r}, expected {FORMAT_VERSION}")
    missing = [key for key in REQUIRED_KEYS if key not in metadata]
    if missing:
        raise malformed(f"its metadata lacks {', '.join(missing)}")
    try:
        shape = json.loads(metadata["input_shape"])
        normalization = None if metadata["normalization"] == "none" else json.loads(metadata["normalization"])
        record = json.loads(metadata.get("lbgat_meta", "{}"))
        num_classes = int(metadata["num_classes"])
    except (ValueError, RecursionError):
        raise malformed("its metadata holds unreadable values") from None
    if not (isinstance(shape, list) and len(shape) == 3 and shape[1] == shape[2]):
        raise malformed(f"input_shape must be [channels, size, size], got {metadata['input_shape']}")
    if normalization is not None and not (isinstance(normalization, dict) and set(normalization) == {"mean", "std"}):
        raise malformed(f"normalization must be 'none' or a mean and a std, got {metadata['normalization']}")
    if not isinstance(record, dict):
        raise malformed("lbgat_meta must be a JSON object")
    student = {"arch": metadata["arch"], "num_classes": num_classes, "in_channels": shape[0], "image_size": shape[1],
               "mean": normalization and normalization["mean"], "std": normalization and normalization["std"]}
    meta = {key: value for key, value in record.items() if value is not None or key in ("teacher", "best")}
    meta["student"] = student
    meta = checkpoint_checks.check_meta(meta, weights)  # the same shape checks as a checkpoint's metadata
    meta["exported_from"] = {"sha256": metadata["checkpoint_sha256"], "name": metadata.get("checkpoint_name")}
    return ModelSpec.from_dict(student), meta


def load_export(folder: Path) -> LoadedExport:
    """The model of an export folder, its weights checked against the layout strictly (every key, every shape)."""
    if not is_export(folder):
        raise not_an_export(folder)
    from .models.official import key_layout

    weights = folder / WEIGHTS
    metadata, tensors = _read(weights)
    spec, meta = _spec_and_meta(metadata, weights)
    try:
        model = spec.build()
    except (RuntimeError, MemoryError, OverflowError, ValueError) as error:  # sizes no network can have
        detail = pickle_safety.brief(str(error)) or type(error).__name__
        raise CheckpointError(f"{weights} describes a {spec.arch} that cannot be built: {detail}") from None
    layout = key_layout(model, spec.arch, spec.num_classes, spec.in_channels, spec.image_size)
    if metadata["key_layout"] != layout.name:
        raise CheckpointError(f"{weights} is in the key layout {metadata['key_layout']!r}; lbgat reads a "
                              f"{spec.arch} in {layout.name!r}")
    problem = key_mismatch(layout.to_official(model.state_dict()), tensors)
    if problem:
        raise CheckpointError(f"{weights} does not fit a {spec.arch}: {problem}")
    checkpoint_checks.check_finite(tensors.items(), weights)
    load_state_strict(model, layout.from_official(tensors), weights)
    return LoadedExport(model.eval(), spec, weights, meta)
