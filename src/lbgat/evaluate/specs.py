"""Evaluation attacks by name: ``clean``, ``fgsm``, ``pgd<K>`` (PGD-K on CE), ``cw<K>`` (PGD-K on the
CW margin), ``aa`` (AutoAttack), and ``transfer-pgd<K>`` (PGD-K crafted on another model)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

from ..errors import ConfigError

AttackKind = Literal["clean", "fgsm", "pgd", "cw", "aa", "transfer"]
# The names --attacks takes, each with the kind of attack it names; all but the STEPLESS ones take a
# number of steps (pgd20).
ATTACK_NAMES: dict[str, AttackKind] = {"clean": "clean", "fgsm": "fgsm", "pgd": "pgd", "cw": "cw", "aa": "aa",
                                       "transfer-pgd": "transfer"}
STEPLESS: tuple[str, ...] = ("clean", "fgsm", "aa")
ATTACK_FORMS = ", ".join(name if name in STEPLESS else f"{name}<K>" for name in ATTACK_NAMES)
DEFAULT_ATTACKS = "clean,pgd20"  # what `lbgat eval` runs without --attacks or --protocol
_NAME = re.compile(rf"^({'|'.join(map(re.escape, ATTACK_NAMES))})(\d*)$")


@dataclass(frozen=True)
class AttackSpec:
    """One white-box evaluation attack (or a transfer attack), with every setting that defines it."""

    name: str
    kind: AttackKind
    eps: float = 0.0
    steps: int = 0
    step_size: float = 0.0
    random_start: bool = False  # uniform in the eps-ball, per example, a function of (seed, index)
    kappa: float | None = None  # CW margin confidence
    norm: str = "Linf"

    def describe(self) -> str:
        if self.kind == "clean":
            return "clean"
        if self.kind == "aa":
            return f"AutoAttack, {self.norm} eps {self.eps:g}"
        if self.kind == "fgsm":
            return f"{'FGSM' if self.norm == 'Linf' else 'FGM (L2)'}, eps {self.eps:g}"
        loss = f"CW margin (kappa {self.kappa:g})" if self.kind == "cw" else "CE"
        start = "uniform random start" if self.random_start else "no random start"
        prefix = "transfer: crafted on the source model, " if self.kind == "transfer" else ""
        return (f"{prefix}{self.steps} steps of {self.step_size:g}, {self.norm} eps {self.eps:g}, {loss}, {start}, "
                "final iterate")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_attacks(
    text: str, *, eps: float, step_size: float, default_steps: int, kappa: float = 50.0, steps: int | None = None,
    norm: str = "Linf",
) -> list[AttackSpec]:
    """``"clean,fgsm,pgd20,cw20,aa"`` -> specs. ``steps`` (if given) overrides the number in every name."""
    specs: list[AttackSpec] = []
    for raw in (part.strip().lower() for part in text.split(",")):
        if not raw:
            continue
        match = _NAME.match(raw)
        if match is None:
            raise ConfigError(f"unknown attack {raw!r}; use {ATTACK_FORMS} (K: the number of steps, e.g. "
                              "pgd20; transfer-pgd<K> with --transfer-from)")
        kind, digits = match.group(1), match.group(2)
        if kind in STEPLESS and digits:
            raise ConfigError(f"attack {raw!r} takes no number of steps")
        if kind == "clean":
            spec = AttackSpec("clean", "clean", norm=norm)
        elif kind == "fgsm":
            spec = AttackSpec("fgsm", "fgsm", eps=eps, steps=1, step_size=eps, norm=norm)
        elif kind == "aa":
            spec = AttackSpec("aa", "aa", eps=eps, norm=norm)
        else:
            count = steps if steps is not None else (int(digits) if digits else default_steps)
            if count < 1:
                raise ConfigError(f"attack {raw!r} needs at least 1 step")
            family = ATTACK_NAMES[kind]
            name = f"{kind}{count}"
            spec = AttackSpec(name, family, eps=eps, steps=count, step_size=step_size, random_start=True,
                              kappa=kappa if family == "cw" else None, norm=norm)
        if any(existing.name == spec.name for existing in specs):
            raise ConfigError(f"attack {spec.name!r} is listed twice")
        specs.append(spec)
    if not specs:
        raise ConfigError(f"no attacks given; e.g. --attacks {DEFAULT_ATTACKS}")
    return specs
