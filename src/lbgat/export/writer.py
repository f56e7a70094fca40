"""``lbgat export``: a checkpoint becomes a folder that other code loads (see :mod:`lbgat.checkpoints.export_folder`).

Everything is checked before anything is written: the input is an lbgat checkpoint with finite
weights that fit its architecture, and ``--out`` is missing or an empty folder that can be written.
The export becomes visible whole or not at all: its files are written into a hidden sibling folder
(:mod:`lbgat.export.staging`), which is renamed to ``--out`` once complete. If anything fails, the
sibling is removed and ``--out`` is as it was.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from ..checkpoints import averaged_weights, checkpoint_checks
from ..checkpoints.checkpoint import check_checkpoint_path, load_checkpoint, load_state_strict, sha256_of
from ..checkpoints.export_folder import CARD, CONFIG, FILES, WEIGHTS, export_metadata, is_export
from ..config import TrainConfig, config_to_yaml
from ..errors import CheckpointError, ConfigError
from ..models.official import KeyLayout, key_layout
from ..runtime.provenance import code_version
from ..storage import tamper_check
from ..storage.files import check_writable, failed_writes, write_bytes_atomic
from ..storage.locks import sibling_lock
from ..structured import from_mapping
from ..train.run_dir import LAST
from ..version import __version__
from .card import CardInputs, render_card
from .evaluations import FoundEvaluations, find_evaluations
from .staging import publish, remove_leftovers, staging_folder

_NOT_A_CHECKPOINT = "export takes a checkpoint written by `lbgat train`: a run's last.pt, best.pt or epoch-N.pt"


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    checkpoint: Path
    layout: KeyLayout
    evaluations: FoundEvaluations
    weights: str = "raw"  # which of the checkpoint's weights were exported


def resolve_checkpoint(source: Path) -> Path:
    """The checkpoint file ``source`` names: itself, or a run folder's last.pt."""
    if source.is_dir():
        if is_export(source):
            raise CheckpointError(f"{source} is already an lbgat export; {_NOT_A_CHECKPOINT}")
        if not (source / LAST).exists():
            raise CheckpointError(f"{source} is a folder without {LAST}; {_NOT_A_CHECKPOINT} (or a run folder)")
        source = source / LAST
    check_checkpoint_path(source)
    return source


def check_out(out: Path) -> None:
    """``out`` is missing or an empty folder, and can be written: an export never replaces files."""
    if out.is_symlink():  # the finished export takes --out's place by a rename, which a link would not survive
        raise ConfigError(f"--out {out} is a symbolic link; give the folder it points to, or a new folder")
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"--out {out} exists and is not a folder; choose a new or empty folder")
        try:
            occupied = next(out.iterdir(), None) is not None
        except OSError as error:
            raise ConfigError(f"cannot read the export folder {out}: {error.strerror or error}") from None
        names = {entry.name for entry in out.iterdir()} if occupied else set()
        if names and names < set(FILES):  # a part of an export: left by one stopped part way
            raise ConfigError(f"--out {out} holds an incomplete export (left by an export stopped part way); "
                              "nothing was written: remove it yourself, or choose a new or empty folder")
        if occupied:
            raise ConfigError(f"--out {out} exists and is not empty; choose a new or empty folder "
                              "(an export never replaces files)")
    check_writable(out, "export folder")


def _student(checkpoint_path: Path, weights: str) -> tuple[Any, torch.nn.Module, dict[str, Any], str]:
    """The checkpoint's student with the ``weights`` asked for (raw or its average), its metadata, and which
    weights those are."""
    checkpoint = load_checkpoint(checkpoint_path, not_lbgat_hint=_NOT_A_CHECKPOINT)
    spec = checkpoint.student_spec
    chosen = averaged_weights.chosen_weights(checkpoint.meta, weights, checkpoint_path)
    prefix = averaged_weights.prefix_of(chosen)
    state = checkpoint.network_state(prefix)
    checkpoint_checks.check_finite(((f"{prefix}.{key}", value) for key, value in state.items()), checkpoint_path)
    try:
        model = spec.build()
    except (RuntimeError, MemoryError, OverflowError, ValueError) as error:  # sizes no network can have
        detail = tamper_check.brief(str(error)) or type(error).__name__
        raise CheckpointError(f"{checkpoint_path} describes a {spec.arch} that cannot be built: {detail}") from None
    load_state_strict(model, state, checkpoint_path)
    return spec, model, checkpoint.meta, chosen


def _config_yaml(config: dict[str, Any]) -> str:
    try:
        text = config_to_yaml(from_mapping(TrainConfig, config))
    except ConfigError:  # a config of another lbgat version: written as it is stored
        text = yaml.safe_dump(config, sort_keys=False)
    return ("# The resolved settings of the run that wrote this checkpoint (lbgat train --config this-file);\n"
            "# paths in it are those of the training machine.\n" + text)


def _write_files(out: Path, files: dict[str, bytes]) -> None:
    remove_leftovers(out)
    staging = staging_folder(out)
    try:
        for name, data in files.items():
            write_bytes_atomic(staging / name, data)
        publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a folder this export created, holding only its own files
        raise


def export_checkpoint(source: Path, out: Path, weights: str = "auto") -> ExportResult:
    """Write ``out``/model.safetensors, README.md and config.yaml from the checkpoint ``source`` (a file, or a
    run folder meaning its last.pt); ``weights`` (lbgat.checkpoints.averaged_weights.WEIGHTS): the raw student or
    the average of its weights the run kept (auto: the average where it has started)."""
    resolve_checkpoint(source)
    check_out(out)  # before the lock, which creates --out's parent; again under it, where it cannot change
    # The lock is kept beside --out: the export folder holds nothing but the export. The files are written into
    # a hidden sibling of --out (export.staging), so a full disk names a file there.
    with sibling_lock(out, "export folder"), failed_writes(out.parent, _NOT_EXPORTED.format(out=out)):
        return _export(source, out, weights)


_NOT_EXPORTED = ("nothing was exported ({out} was not created or changed, and the partial export beside it was "
                 "removed again) and the checkpoint is unchanged: free some space, then export again")


def _export(source: Path, out: Path, weights: str) -> ExportResult:
    from safetensors.torch import save

    checkpoint_path = resolve_checkpoint(source)
    check_out(out)
    spec, model, meta, chosen = _student(checkpoint_path, weights)
    layout = key_layout(model, spec.arch, spec.num_classes, spec.in_channels, spec.image_size)
    tensors = layout.to_official(model.state_dict())
    checkpoint_sha256 = sha256_of(checkpoint_path)
    metadata = export_metadata(spec, layout.name, meta, checkpoint_sha256=checkpoint_sha256,
                               checkpoint_name=checkpoint_path.name, version=__version__, weights=chosen)
    data = save(tensors, metadata=metadata)
    evaluations = find_evaluations(checkpoint_path, checkpoint_sha256, chosen)
    card = render_card(CardInputs(
        spec=spec, layout=layout, meta=meta, checkpoint_name=checkpoint_path.name,
        checkpoint_sha256=checkpoint_sha256, weights_sha256=hashlib.sha256(data).hexdigest(),
        weights=chosen, weights_description=averaged_weights.describe(meta, chosen),
        num_tensors=len(tensors), num_parameters=sum(p.numel() for p in model.parameters()),
        dtypes=", ".join(sorted({str(tensor.dtype).removeprefix("torch.") for tensor in tensors.values()})),
        evaluations=evaluations.matching, folder_name=out.resolve().name, exported_with=code_version(),
    ))
    _write_files(out, {WEIGHTS: data, CONFIG: _config_yaml(meta.get("config", {})).encode("utf-8"),
                       CARD: card.encode("utf-8")})
    return ExportResult(out, checkpoint_path, layout, evaluations, chosen)
