"""What a checkpoint must hold before anything uses it: metadata of the right shape, finite tensors.

A file that loads safely can still be malformed (edited metadata, a list where a mapping belongs)
or hold NaN/Inf weights (saved from a diverged run elsewhere). Both are refused here in one line,
once, when the file is read, instead of surfacing later as a ``KeyError`` or as meaningless
accuracies. :func:`check_meta` is what every reader needs (the student's architecture, and the
shape of the sections that evaluation reports); :func:`check_resumable` adds what ``--resume``
restores (position, running sums, optimiser state, RNG state).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .model_spec import ModelSpec

# Keys of the metadata that must be mappings (or absent, or null where noted) when present.
_MAPPING_SECTIONS = ("config", "dataset", "position", "epoch_totals")
_OPTIONAL_MAPPING_SECTIONS = ("teacher", "best", "grad_scaler")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _malformed(path: Path, detail: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} has malformed metadata: {detail}")


def _check_spec(value: object, where: str, path: Path) -> None:
    """A :class:`lbgat.checkpoints.model_spec.ModelSpec` as a mapping: the fields it takes, of the types it needs."""
    if not isinstance(value, Mapping):
        raise _malformed(path, f"'{where}' must be a mapping, got {type(value).__name__}")
    fields = {field.name: field for field in dataclasses.fields(ModelSpec)}
    unknown = sorted(set(value) - set(fields), key=str)
    if unknown:
        raise _malformed(path, f"'{where}' has an unknown field {unknown[0]!r}")
    for name in ("arch", "num_classes", "in_channels", "image_size"):
        if name not in value:
            raise _malformed(path, f"'{where}' lacks '{name}'")
    if not isinstance(value["arch"], str):
        raise _malformed(path, f"'{where}.arch' must be a string, got {value['arch']!r}")
    for name in ("num_classes", "in_channels", "image_size"):
        if not _is_int(value[name]) or value[name] < 1:
            raise _malformed(path, f"'{where}.{name}' must be a positive integer, got {value[name]!r}")
    for name in ("mean", "std"):
        given = value.get(name)
        if given is not None and not (isinstance(given, list) and all(map(_is_number, given))):
            raise _malformed(path, f"'{where}.{name}' must be a list of numbers or null, got {given!r}")


def check_meta(meta: object, path: Path) -> dict[str, Any]:
    """The metadata of an lbgat checkpoint, checked for what every reader of it relies on."""
    if not isinstance(meta, dict):
        raise _malformed(path, f"it must be a mapping, got {type(meta).__name__}")
    if "student" not in meta:
        raise _malformed(path, "it lacks 'student' (the trained model's architecture)")
    _check_spec(meta["student"], "student", path)
    if meta.get("teacher") is not None:
        _check_spec(meta["teacher"], "teacher", path)
    for name in _MAPPING_SECTIONS:
        if name in meta and not isinstance(meta[name], dict):
            raise _malformed(path, f"'{name}' must be a mapping, got {type(meta[name]).__name__}")
    for name in _OPTIONAL_MAPPING_SECTIONS:
        if meta.get(name) is not None and not isinstance(meta[name], dict):
            raise _malformed(path, f"'{name}' must be a mapping or null, got {type(meta[name]).__name__}")
    if "kind" in meta and not isinstance(meta["kind"], str):
        raise _malformed(path, f"'kind' must be a string, got {meta['kind']!r}")
    dataset = meta.get("dataset", {})
    if "name" in dataset and not isinstance(dataset["name"], str):
        raise _malformed(path, f"'dataset.name' must be a string, got {dataset['name']!r}")
    if dataset.get("root") is not None and not isinstance(dataset["root"], str):
        raise _malformed(path, f"'dataset.root' must be a string or null, got {dataset['root']!r}")
    data_config = meta.get("config", {}).get("data", {})
    if not isinstance(data_config, dict):
        raise _malformed(path, f"'config.data' must be a mapping, got {type(data_config).__name__}")
    image_size = data_config.get("image_size")
    if image_size is not None and not (_is_int(image_size) and image_size >= 1):
        raise _malformed(path, f"'config.data.image_size' must be a positive integer or null, got {image_size!r}")
    return meta


def check_state(state: object, path: Path) -> dict[str, torch.Tensor]:
    """The ``state`` section: tensors by name."""
    if not isinstance(state, dict) or not all(
            isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()):
        raise CheckpointError(f"checkpoint {path} is malformed: its 'state' must map names to tensors")
    return state


def check_resumable(meta: dict[str, Any], optimizer: object, state: dict[str, torch.Tensor], path: Path) -> None:
    """What ``--resume`` restores, checked before any of it is: position, running sums, optimiser
    and RNG state, with every restored tensor finite."""
    if not isinstance(meta.get("config"), dict):
        raise _malformed(path, "it lacks 'config' (the run's settings), so it cannot be resumed")
    position = meta.get("position")
    if not isinstance(position, dict) or set(position) != {"epoch", "batch", "global_step"} or not all(
            _is_int(value) and value >= 0 for value in position.values()):
        raise _malformed(path, f"'position' must map epoch, batch and global_step to counts, got {position!r}")
    totals = meta.get("epoch_totals")
    if not (isinstance(totals, dict) and set(totals) == {"sums", "steps", "seconds"}
            and isinstance(totals["sums"], dict) and all(map(_is_number, totals["sums"].values()))
            and _is_int(totals["steps"]) and totals["steps"] >= 0 and _is_number(totals["seconds"])):
        raise _malformed(path, "'epoch_totals' must hold sums (numbers by name), steps and seconds")
    best = meta.get("best")
    if best is not None and not _is_number(best.get("robust_acc")):
        raise _malformed(path, f"'best' must hold a robust_acc number, got {best!r}")
    if not (isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
            and isinstance(optimizer.get("param_groups"), list)):
        raise CheckpointError(f"checkpoint {path} holds no optimiser state, so it cannot be resumed "
                              "(resume from a run's last.pt)")
    rng = state.get("rng.torch_cpu")
    if rng is not None and (rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape):
        raise CheckpointError(f"checkpoint {path} is malformed: 'rng.torch_cpu' is not a CPU RNG state")
    weights = {key: value for key, value in state.items() if not key.startswith("rng.")}
    check_finite(weights.items(), path)
    check_finite(_optimizer_tensors(optimizer["state"]), path)


def _optimizer_tensors(state: dict[Any, Any]) -> Iterable[tuple[str, torch.Tensor]]:
    for index, buffers in state.items():
        if isinstance(buffers, dict):
            for name, value in buffers.items():
                if isinstance(value, torch.Tensor):
                    yield f"optimizer state {index}.{name}", value


def nonfinite_description(name: str, tensor: torch.Tensor) -> str | None:
    """``"NAME holds 432 NaN values"`` (or infinite ones), or None when the tensor is finite."""
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return None
    finite = torch.isfinite(tensor)
    if bool(finite.all()):
        return None
    nan = int(torch.isnan(tensor).sum())
    infinite = int((~finite).sum()) - nan
    counts = [f"{nan} NaN" if nan else "", f"{infinite} infinite" if infinite else ""]
    return f"{name} holds {' and '.join(filter(None, counts))} values"


def check_finite(tensors: Iterable[tuple[str, torch.Tensor]], path: Path) -> None:
    """Refuse weights that hold NaN or Inf, naming the first tensor (and how many others) that does."""
    found = [description for name, tensor in tensors
             if (description := nonfinite_description(name, tensor)) is not None]
    if found:
        more = f" (and {len(found) - 1} more tensors)" if len(found) > 1 else ""
        raise CheckpointError(f"refusing {path}: {found[0]}{more}; a model with non-finite weights "
                              "computes nothing meaningful")
