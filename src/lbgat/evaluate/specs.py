"""Evaluation attacks by name: ``clean``, ``fgsm``, ``pgd<K>`` (PGD-K, CE), ``cw<K>`` (PGD-K, CW margin)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

from ..errors import ConfigError

AttackKind = Literal["clean", "fgsm", "pgd", "cw"]
_NAME = re.compile(r"^(clean|fgsm|pgd|cw)(\d*)$")


@dataclass(frozen=True)
class AttackSpec:
    """One white-box L-infinity evaluation attack, with every setting that defines it."""

    name: str
    kind: AttackKind
    eps: float = 0.0
    steps: int = 0
    step_size: float = 0.0
    random_start: bool = False  # uniform in the eps-ball, per example, a function of (seed, index)
    kappa: float | None = None  # CW margin confidence

    def describe(self) -> str:
        if self.kind == "clean":
            return "clean"
        if self.kind == "fgsm":
            return f"FGSM, eps {self.eps:g}"
        loss = "CE" if self.kind == "pgd" else f"CW margin (kappa {self.kappa:g})"
        start = "uniform random start" if self.random_start else "no random start"
        return f"{self.steps} steps of {self.step_size:g}, eps {self.eps:g}, {loss}, {start}, final iterate"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_attacks(
    text: str, *, eps: float, step_size: float, default_steps: int, kappa: float = 50.0, steps: int | None = None
) -> list[AttackSpec]:
    """``"clean,fgsm,pgd20,cw20"`` -> specs. ``steps`` (if given) overrides the number in every name."""
    specs: list[AttackSpec] = []
    for raw in (part.strip().lower() for part in text.split(",")):
        if not raw:
            continue
        match = _NAME.match(raw)
        if match is None:
            raise ConfigError(
                f"unknown attack {raw!r}; use clean, fgsm, pgd<steps> (e.g. pgd20) or cw<steps> (e.g. cw20)")
        kind, digits = match.group(1), match.group(2)
        if kind in ("clean", "fgsm") and digits:
            raise ConfigError(f"attack {raw!r} takes no number of steps")
        if kind == "clean":
            spec = AttackSpec("clean", "clean")
        elif kind == "fgsm":
            spec = AttackSpec("fgsm", "fgsm", eps=eps, steps=1, step_size=eps)
        else:
            count = steps if steps is not None else (int(digits) if digits else default_steps)
            if count < 1:
                raise ConfigError(f"attack {raw!r} needs at least 1 step")
            spec = AttackSpec(f"{kind}{count}", kind, eps=eps, steps=count, step_size=step_size, random_start=True,
                              kappa=kappa if kind == "cw" else None)
        if any(existing.name == spec.name for existing in specs):
            raise ConfigError(f"attack {spec.name!r} is listed twice")
        specs.append(spec)
    if not specs:
        raise ConfigError("no attacks given; e.g. --attacks clean,pgd20")
    return specs
