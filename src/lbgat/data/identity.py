"""Whether a resumed run sees the data it was trained on: compared by content, never by path.

A run records :attr:`Dataset.fingerprint` (sha256 of each split's images and labels) and, with ``data.extra``,
:attr:`ExtraData.fingerprint` in its checkpoints; a resume with the same data under another path, spelling or
serialisation is accepted, and one with different content is refused naming the split (or the extra data) that
differs.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .base import Dataset
from .extra import ExtraData

_SHOWN_HEX = 12  # enough of a sha256 to tell two fingerprints apart in a message


def recorded_fingerprint(meta: Any) -> dict[str, str] | None:
    """The fingerprint a checkpoint's metadata holds, or None (a run from before fingerprints)."""
    dataset = meta.get("dataset") if isinstance(meta, dict) else None
    fingerprint = dataset.get("fingerprint") if isinstance(dataset, dict) else None
    if isinstance(fingerprint, dict) and all(isinstance(fingerprint.get(split), str) for split in ("train", "test")):
        return {split: fingerprint[split] for split in ("train", "test")}
    return None


def check_same_data(meta: Any, dataset: Dataset) -> str | None:
    """Refuse (ConfigError, one line) data whose content differs from what the run recorded.

    Returns a warning to show when the run recorded no fingerprint (nothing can be checked), else None.
    """
    recorded = recorded_fingerprint(meta)
    if recorded is None:
        return ("the run's checkpoint records no data fingerprint (written by an older lbgat), so the data "
                f"cannot be checked against it; resuming on {dataset.name} from {dataset.source}")
    now = dataset.fingerprint
    for split in ("train", "test"):
        if recorded[split] != now[split]:
            image_set = dataset.train if split == "train" else dataset.test
            raise ConfigError(
                f"--resume with different data: the {split} split of {dataset.name} in {dataset.source} "
                f"({len(image_set)} images) has fingerprint {now[split][:_SHOWN_HEX]}…, the run trained on "
                f"{recorded[split][:_SHOWN_HEX]}…; resume with the run's data (its path may differ)")
    return None


def check_same_extra(meta: Any, extra: ExtraData | None) -> None:
    """Refuse (ConfigError, one line) a resume whose extra data (``data.extra``) differs in content from the
    run's, or that adds or drops it. A run from before extra data had none."""
    dataset = meta.get("dataset") if isinstance(meta, dict) else None
    recorded = dataset.get("extra") if isinstance(dataset, dict) else None
    recorded = recorded if isinstance(recorded, dict) and isinstance(recorded.get("fingerprint"), str) else None
    if recorded is None and extra is None:
        return
    if extra is None:
        raise ConfigError(f"--resume without the run's extra data: it trained with data.extra {recorded['path']} "
                          f"({recorded.get('images')} images); give it again (its path may differ)")
    if recorded is None:
        raise ConfigError(f"--resume with data.extra {extra.source}, but the run trained without extra data")
    if recorded["fingerprint"] != extra.fingerprint:
        raise ConfigError(
            f"--resume with different extra data: data.extra {extra.source} ({len(extra)} images) has fingerprint "
            f"{extra.fingerprint[:_SHOWN_HEX]}…, the run trained on {recorded['fingerprint'][:_SHOWN_HEX]}… "
            f"({recorded.get('path')}); resume with the run's extra data (its path may differ)")
