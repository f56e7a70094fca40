"""Loading a model to evaluate or use: from an lbgat checkpoint, a folder written by ``lbgat export``, or a
third-party state dict with its architecture named. Nothing read can run code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..storage import tamper_check
from . import averaged_weights, checkpoint_checks
from .checkpoint import check_checkpoint_path, checkpoint_from_payload, load_state_strict, read_tensors_file
from .export_folder import carries_export_metadata, load_export, weights_not_folder
from .model_spec import ModelSpec

# Wrappers third-party code puts around a state dict (RobustBench, timm, common training scripts).
_STATE_DICT_WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "state")


def _plain_state_dict(payload: object, path: Path) -> dict[str, torch.Tensor]:
    """A third-party state dict: unwrapped and without DataParallel's ``module.`` prefix."""
    if isinstance(payload, dict):
        for key in _STATE_DICT_WRAPPERS:
            inner = payload.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                payload = inner
                break
    if not isinstance(payload, dict) or not payload or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in payload.items()
    ):
        raise CheckpointError(f"{path} holds neither an lbgat checkpoint nor a state dict of tensors")
    if all(key.startswith("module.") for key in payload):
        payload = {key.removeprefix("module."): value for key, value in payload.items()}
    return dict(payload)


class PlainStateDictError(CheckpointError):
    """A plain state dict loaded without saying its architecture (each command names its own flag)."""


@dataclass
class LoadedModel:
    """A model ready for evaluation, and what it was loaded from."""

    model: nn.Module
    spec: ModelSpec
    path: Path  # the file read (an export's model.safetensors)
    meta: dict[str, Any] | None  # lbgat checkpoints and exports only
    exported: bool = False  # read from a folder written by `lbgat export`
    weights: str = "raw"  # which weights: raw, or the average the run kept (ema, swa)
    weights_description: str = "raw: the weights as trained"

    @property
    def kind(self) -> str:
        if self.exported:
            return "lbgat export"
        return "lbgat checkpoint" if self.meta is not None else "state dict"


def load_for_eval(path: str | Path, *, arch: str | None = None, num_classes: int | None = None,
                  in_channels: int = 3, image_size: int = 32,
                  device: str | torch.device = "cpu", weights: str = "auto") -> LoadedModel:
    """The student of an lbgat checkpoint or of a folder written by ``lbgat export``, or a plain (e.g.
    official LBGAT/TRADES, RobustBench) state dict loaded strictly into ``arch``; in eval mode, on
    ``device``, taking inputs in [0, 1]. ``weights`` (lbgat.checkpoints.averaged_weights.WEIGHTS): the raw
    student or the average of its weights the run kept; auto takes the average where it has started."""
    path = Path(path)
    if path.is_dir():
        return _load_export_for_eval(path, arch, num_classes, device, weights)
    check_checkpoint_path(path)  # a FIFO or a folder is named as such before anything opens it
    if carries_export_metadata(path):  # torch.load reads safetensors too, as a plain state dict
        raise weights_not_folder(path)
    payload = read_tensors_file(path)
    if isinstance(payload, dict) and "lbgat_checkpoint" in payload:
        checkpoint = checkpoint_from_payload(payload, path)
        spec = checkpoint.student_spec
        if arch is not None and arch != spec.arch:
            raise CheckpointError(f"{path} holds a {spec.arch}, not a {arch}; drop --model")
        if num_classes is not None and num_classes != spec.num_classes:
            raise CheckpointError(f"{path} has {spec.num_classes} classes, not {num_classes}")
        meta = checkpoint.meta
        chosen = averaged_weights.chosen_weights(meta, weights, path)
        prefix = averaged_weights.prefix_of(chosen)
        state = checkpoint.network_state(prefix)
        checkpoint_checks.check_finite(((f"{prefix}.{key}", value) for key, value in state.items()), path)
    else:
        if arch is None:
            raise PlainStateDictError(f"{path} is a plain state dict: say which architecture it is with --model "
                                      "(and --num-classes if not 10)")
        chosen = averaged_weights.check_held_one("raw", weights, path, "a plain state dict holds one set of weights, "
                                                 "the ones it was saved with (give --weights raw or auto)")
        state = _plain_state_dict(payload, path)
        checkpoint_checks.check_finite(state.items(), path)
        spec = ModelSpec(arch, num_classes or 10, in_channels, image_size)
        meta = None
    try:
        model = spec.build()
    except (RuntimeError, MemoryError, OverflowError, ValueError) as error:  # sizes no network can have
        detail = tamper_check.brief(str(error)) or type(error).__name__
        raise CheckpointError(f"{path} describes a {spec.arch} that cannot be built ({spec.num_classes} classes, "
                              f"{spec.in_channels}x{spec.image_size} inputs): {detail}") from None
    load_state_strict(model, state, path)
    return LoadedModel(model.to(device).eval(), spec, path, meta, weights=chosen,
                       weights_description=averaged_weights.describe(meta or {}, chosen))


def _load_export_for_eval(folder: Path, arch: str | None, num_classes: int | None,
                          device: str | torch.device, weights: str) -> LoadedModel:
    loaded = load_export(folder)
    held = loaded.meta.get("weights", "raw")
    averaged_weights.check_held_one(held, weights, folder, "export the checkpoint again with --weights "
                                                           f"{weights}")
    spec = loaded.spec
    if arch is not None and arch != spec.arch:
        raise CheckpointError(f"{folder} holds a {spec.arch}, not a {arch}; drop --model")
    if num_classes is not None and num_classes != spec.num_classes:
        raise CheckpointError(f"{folder} has {spec.num_classes} classes, not {num_classes}")
    return LoadedModel(loaded.model.to(device), spec, loaded.weights, loaded.meta, exported=True, weights=held,
                       weights_description=averaged_weights.describe(loaded.meta, held))


def load_model(path: str | Path, *, arch: str | None = None, num_classes: int | None = None,
               in_channels: int = 3, image_size: int = 32, device: str | torch.device = "cpu",
               weights: str = "auto") -> nn.Module:
    """The trained (student) model of an lbgat checkpoint, or of a folder written by ``lbgat export``, in
    eval mode, taking inputs in [0, 1].

    ``weights``: ``auto`` (the run's averaged weights where it kept an average that has started, else the
    raw ones), ``raw``, ``ema`` or ``swa`` (docs/training.md, "Weight averaging").

    A plain state dict (official LBGAT/TRADES checkpoints, RobustBench files; a DataParallel
    ``module.`` prefix is stripped) loads strictly into ``arch`` with ``num_classes`` classes.
    Files are read with ``torch.load(weights_only=True)``, exports with safetensors: nothing in them can
    run code.
    """
    return load_for_eval(path, arch=arch, num_classes=num_classes, in_channels=in_channels,
                         image_size=image_size, device=device, weights=weights).model
