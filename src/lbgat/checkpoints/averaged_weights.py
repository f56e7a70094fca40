"""The averaged weights a checkpoint may hold beside the raw ones, and which of them a reader loads.

A run trained with ``average.kind: ema`` or ``swa`` (lbgat.config.AverageConfig, docs/training.md "Weight
averaging") saves in every checkpoint the student's averaged weights under ``average.<key>`` (parameters and
BatchNorm buffers, under the student's own key names) beside the raw ``student.<key>``, and in its metadata
``average: {"kind": "ema", "updates": N}``. Before averaging starts (``updates`` 0) the average is a copy of
the raw weights.

Everything that loads a model (``lbgat eval`` and ``lbgat export`` with ``--weights``, ``lbgat.load_model``)
chooses here: ``auto`` (the default) takes the averaged weights of a checkpoint whose average has started and
the raw weights otherwise; ``raw``, ``ema`` and ``swa`` ask for those, and a checkpoint without them is refused
in one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

AVERAGES: tuple[str, ...] = ("ema", "swa")  # the averages a run may keep (average.kind, besides "none")
WEIGHTS: tuple[str, ...] = ("auto", "raw", *AVERAGES)  # --weights of eval and export, load_model(weights=)
PREFIX = "average"  # the averaged weights' keys in a checkpoint's state: average.<student key>
WEIGHTS_HELP = ("which weights: auto (default: the run's averaged weights where it kept an average that has "
                "started, else the raw ones), raw, ema or swa (the average the run kept)")


def held_average(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The checkpoint's ``average`` record (kind, updates), or None for a run without weight averaging."""
    average = meta.get("average")
    return average if isinstance(average, dict) else None


def check_average(meta: Mapping[str, Any], state: Mapping[str, torch.Tensor], path: Path) -> None:
    """An ``average`` record of the right shape, and the averaged weights it announces present (as many
    tensors as the student's)."""
    average = meta.get("average")
    if average is None:
        return
    if not (isinstance(average, dict) and average.get("kind") in AVERAGES and isinstance(average.get("updates"), int)
            and not isinstance(average.get("updates"), bool) and average["updates"] >= 0):
        raise CheckpointError(f"checkpoint {path} has malformed metadata: 'average' must hold a kind "
                              f"({' or '.join(AVERAGES)}) and a count of updates, got {average!r}")
    student = {key.partition(".")[2] for key in state if key.startswith("student.")}
    averaged = {key.partition(".")[2] for key in state if key.startswith(PREFIX + ".")}
    if averaged != student:
        raise CheckpointError(f"checkpoint {path} is malformed: its metadata announces {average['kind']} weights, "
                              "but its averaged weights do not match the student's keys")


def chosen_weights(meta: Mapping[str, Any], requested: str, source: Path) -> str:
    """``raw`` or the kind of average to load from an lbgat checkpoint, for ``requested`` (one of WEIGHTS)."""
    if requested not in WEIGHTS:
        raise CheckpointError(f"weights must be one of {', '.join(WEIGHTS)}, got {requested!r}")
    average = held_average(meta)
    if requested == "auto":
        return average["kind"] if average is not None and average["updates"] > 0 else "raw"
    if requested == "raw":
        return "raw"
    if average is None:
        raise CheckpointError(f"{source} holds no {requested} weights: its run trained without weight averaging "
                              f"(average.kind: none); use --weights raw")
    if average["kind"] != requested:
        raise CheckpointError(f"{source} holds {average['kind']} weights, not {requested}: use --weights "
                              f"{average['kind']} (or raw)")
    if average["updates"] == 0:
        start = (meta.get("config") or {}).get("average", {}).get("start")
        done = (meta.get("position") or {}).get("epoch")
        raise CheckpointError(f"{source}'s {requested} average has not started (it starts after epoch {start}; the "
                              f"checkpoint is at epoch {done}), so its weights are the raw ones: use --weights raw")
    return requested


def prefix_of(weights: str) -> str:
    """The checkpoint state's prefix of ``weights`` (raw: the student's)."""
    return "student" if weights == "raw" else PREFIX


def check_held_one(held: str, requested: str, source: Path, remedy: str) -> str:
    """The weights of a file holding one set (an export, a plain state dict): ``requested`` must be those or auto."""
    if requested not in WEIGHTS:
        raise CheckpointError(f"weights must be one of {', '.join(WEIGHTS)}, got {requested!r}")
    if requested not in ("auto", held):
        raise CheckpointError(f"{source} holds only {held} weights, not {requested}; {remedy}")
    return held


def describe(meta: Mapping[str, Any], weights: str) -> str:
    """What ``weights`` of a checkpoint are, in words (for the evaluation report and the model card)."""
    if weights == "raw":
        return "raw: the weights as trained" + (" (the run also kept an average)" if held_average(meta) else "")
    settings = (meta.get("config") or {}).get("average") or {}
    average = held_average(meta) or {}
    every = settings.get("every", 1)
    cadence = "every step" if every == 1 else f"every {every} steps of an epoch"
    start = settings.get("start", 0)
    since = f"from epoch {start + 1}"
    if weights == "ema":
        rule = f"exponential moving average, decay {settings.get('decay')}"
        if settings.get("warmup"):
            rule += " ramped as min(decay, (1 + n)/(10 + n)) over its n-th update"
    else:
        decay = settings.get("decay")
        rule = ("stochastic weight averaging, the equal-weight mean" if decay is None
                else f"stochastic weight averaging with a fixed decay {decay}")
    bn = {"copy": "BatchNorm statistics copied from the raw weights",
          "ema": "BatchNorm statistics averaged with the same decay",
          "recompute": "BatchNorm statistics recomputed over the epoch's training images at each epoch end"}.get(
              str(settings.get("bn")), f"BatchNorm statistics: {settings.get('bn')}")
    return f"{weights}: {rule}, {cadence} {since}; {bn}; {average.get('updates', '?')} updates"
