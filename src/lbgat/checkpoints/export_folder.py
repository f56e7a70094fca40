"""An exported model folder (written by ``lbgat export``), and reading it back.

Layout::

    DIR/model.safetensors   the student's weights in the official key layout of its architecture
                            (lbgat.models.official), with what rebuilds it in the metadata header
    DIR/README.md           the model card
    DIR/config.yaml         the resolved settings of the run that trained it

An export becomes visible whole or not at all: ``lbgat export`` writes it into a hidden sibling folder,
``.DIR.<random>.lbgat-export``, holding :data:`UNFINISHED` until every file is written, then renames it to
DIR. A folder lacking one of the three files, or still marked unfinished, is refused by every reader.

safetensors holds raw tensors and a JSON header, so reading it runs no code. The header's
metadata (strings only) holds the architecture, classes, input shape, normalisation, key layout,
lbgat version, the source checkpoint's sha256 and which of its weights were exported (``weights``: raw, ema
or swa; raw where absent) as plain keys, and the training record (config, dataset, position, code version,
the average the run kept) as JSON under ``lbgat_meta``.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..storage import tamper_check
from . import checkpoint_checks
from .averaged_weights import AVERAGES
from .checkpoint import check_checkpoint_path, key_mismatch, load_state_strict
from .model_spec import ModelSpec

WEIGHTS = "model.safetensors"
CARD = "README.md"
CONFIG = "config.yaml"
FILES = (WEIGHTS, CARD, CONFIG)
UNFINISHED = ".lbgat-export-unfinished"  # in a folder an export is still writing (or was killed writing)
HEADER_LIMIT = 100 << 20  # safetensors' own limit on the size of its JSON header
FORMAT = "lbgat-export"
FORMAT_VERSION = "1"
# The metadata keys every export has (besides lbgat_meta and the "format": "pt" safetensors convention).
REQUIRED_KEYS = ("lbgat_export", "arch", "num_classes", "input_shape", "normalization", "key_layout",
                 "lbgat_version", "checkpoint_sha256")


def is_export(folder: Path) -> bool:
    """Whether ``folder`` looks like an export (holds model.safetensors)."""
    return folder.is_dir() and (folder / WEIGHTS).exists()


def export_metadata(spec: ModelSpec, layout_name: str, meta: dict[str, Any], *, checkpoint_sha256: str,
                    checkpoint_name: str, version: str, weights: str = "raw") -> dict[str, str]:
    """The safetensors metadata of an export: plain keys a person or another tool reads directly, and the
    training record as JSON. ``weights``: which of the checkpoint's weights were exported (raw, ema, swa)."""
    normalization = "none" if spec.mean is None else json.dumps({"mean": spec.mean, "std": spec.std})
    record = {key: meta.get(key) for key in ("kind", "config", "teacher", "dataset", "position", "best",
                                             "code_version", "average")}
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
        "weights": weights,
        "dataset": str(meta.get("dataset", {}).get("name")),
        "method": str(meta.get("config", {}).get("method", {}).get("name")),
        "lbgat_meta": json.dumps(record, allow_nan=False),
    }


def check_finished(folder: Path) -> None:
    """Refuse the hidden folder of an export still being written, or killed while it was."""
    if (folder / UNFINISHED).exists() or (folder / UNFINISHED).is_symlink():
        raise CheckpointError(f"{folder} is an export that was never finished (its writer stopped part way); "
                              "export the checkpoint again")


def check_complete(folder: Path) -> None:
    """Refuse an export missing one of its files (left by an older lbgat, which wrote them one by one, killed
    part way)."""
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"{folder} is an incomplete lbgat export: it has no {' or '.join(missing)} (an export "
                              "stopped part way?); export the checkpoint again")


def carries_export_metadata(path: Path) -> bool:
    """Whether ``path`` is a safetensors file whose header says lbgat exported it (its header alone is read)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the reader
        with os.fdopen(descriptor, "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                return False
            size = int.from_bytes(file.read(8), "little")
            if not 2 <= size <= HEADER_LIMIT:
                return False
            header = json.loads(file.read(size).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(metadata, dict) and "lbgat_export" in metadata


def weights_not_folder(path: Path) -> CheckpointError:
    """The one line for an export's weights file given where its folder belongs."""
    return CheckpointError(f"{path} is the weights file of an lbgat export: give its folder, {path.parent}, "
                           "which holds what rebuilds the model (the architecture is read from it, no --model)")


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
        detail = tamper_check.brief(str(error)) or type(error).__name__
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
    # Exports written before weight averaging hold the raw weights.
    exported = metadata.get("weights", "raw")
    if exported != "raw" and exported not in AVERAGES:
        raise malformed(f"weights must be raw or an average ({', '.join(AVERAGES)}), got {exported!r}")
    meta["weights"] = exported
    return ModelSpec.from_dict(student), meta


def load_export(folder: Path) -> LoadedExport:
    """The model of an export folder, its weights checked against the layout strictly (every key, every shape)."""
    if not is_export(folder):
        raise not_an_export(folder)
    check_finished(folder)
    from ..models.official import key_layout

    weights = folder / WEIGHTS
    metadata, tensors = _read(weights)
    spec, meta = _spec_and_meta(metadata, weights)
    try:
        model = spec.build()
    except (RuntimeError, MemoryError, OverflowError, ValueError) as error:  # sizes no network can have
        detail = tamper_check.brief(str(error)) or type(error).__name__
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
    check_complete(folder)  # after the weights, whose own faults say more
    return LoadedExport(model.eval(), spec, weights, meta)
