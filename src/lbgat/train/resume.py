"""Which settings a resumed run may change, and the changes that refuse a resume (most meaningful first)."""

from __future__ import annotations

from typing import Any

from ..config import TrainConfig, resumable_settings
from ..errors import ConfigError
from ..methods import method_params
from ..structured import to_mapping

# Settings a resumed run may change: they do not alter what is computed (declared at each setting;
# data.root may change because the data is identified by its content fingerprint, lbgat.data.identity).
RESUMABLE_CHANGES = resumable_settings()


def differences(saved: dict[str, Any], new: dict[str, Any], prefix: str = "",
                defaults: dict[str, Any] | None = None) -> list[str]:
    """Settings that differ between a run and a resume. A setting newer than the run's code counts as
    unchanged when it holds its default (which is what that code did)."""
    if defaults is None:
        defaults = to_mapping(TrainConfig())
        # A method hyperparameter newer than the run's code likewise counts as unchanged at its default.
        defaults["method"]["params"] = _method_defaults(new.get("method", {}).get("name"))
    keys = sorted(set(saved) | set(new))
    found: list[str] = []
    for key in keys:
        path = f"{prefix}{key}"
        left, right = saved.get(key), new.get(key)
        if key not in saved and key in defaults and right == defaults[key]:
            continue
        if isinstance(left, dict) and isinstance(right, dict):
            default = defaults.get(key)
            found += differences(left, right, path + ".", default if isinstance(default, dict) else {})
        elif left != right and path not in RESUMABLE_CHANGES:
            found.append(f"{path} ({left!r} in the run, {right!r} now)")
    return found


# A resume that changes several settings names the one that explains the others first (trades ->
# pgd-at also changes attack.objective, start and warmup, but the method is the difference; step -> onecycle
# changes the settings each kind resolves).
MEANINGFUL_FIRST = ("method.name", "model", "teacher", "data.name", "teacher_checkpoints", "method.params",
                   "method.plugins", "method.plugin_params", "schedule.kind")


def most_meaningful_first(changes: list[str]) -> list[str]:
    def rank(change: str) -> int:
        setting = change.split(" ", 1)[0]
        for position, prefix in enumerate(MEANINGFUL_FIRST):
            if setting == prefix or setting.startswith(prefix + "."):
                return position
        return len(MEANINGFUL_FIRST)
    return sorted(changes, key=rank)


def _method_defaults(name: Any) -> dict[str, Any]:
    try:
        return to_mapping(method_params(str(name)))
    except ConfigError:  # an unknown method: reported as a changed method.name
        return {}
