"""The report's paired comparisons: each setting against the first one given (the reference), on every attack
both were evaluated with under the same settings, image by image from their ``per_sample.json``.

Two accuracies on the same test images are far more comparable than their separate intervals suggest: most
images are right (or wrong) for both models, and only the images they disagree on say which is better. So
each pair gets the exact McNemar test and Newcombe's paired interval of the difference
(:mod:`lbgat.evaluate.intervals`), per seed when the settings were trained with several seeds, and then the
mean over seeds of those per-seed differences with its Student-t interval over seeds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..evaluate.intervals import PairedDifference, SeedSpread, paired_difference, seed_spread
from .collect import Evaluation, Run
from .seeds import SeedGroup

PER_SAMPLE = "per_sample.json"
MINUS = "−"  # U+2212: "A − B" reads as a difference, not a hyphenated name


@dataclass(frozen=True)
class SeedPair:
    seed: int | None  # None: the two settings have one run each, paired whatever their seeds
    result: PairedDifference
    text: str


@dataclass(frozen=True)
class AttackComparison:
    attack: str  # the attack's name in the results ("clean", "pgd40")
    title: str  # as people write it ("PGD-40")
    pairs: tuple[SeedPair, ...]
    mean: SeedSpread | None  # over seeds of the per-seed differences (two or more seeds)
    mean_text: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"attack": self.attack, "title": self.title,
                "per_seed": [{"seed": pair.seed, **pair.result.to_dict(), "text": pair.text} for pair in self.pairs],
                "mean_over_seeds": ({**self.mean.to_dict(), "text": self.mean_text,
                                     "what": "mean over seeds of the per-seed differences A - B (= the difference "
                                             "of the seed-mean accuracies), its sd over seeds and Student-t "
                                             "interval over seeds"} if self.mean else None)}


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str  # the reference
    attacks: tuple[AttackComparison, ...]

    @property
    def title(self) -> str:
        return f"{self.a} {MINUS} {self.b}"

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "attacks": [attack.to_dict() for attack in self.attacks]}


@dataclass
class PairedSection:
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.comparisons[0].b if self.comparisons else None,
                "comparisons": [comparison.to_dict() for comparison in self.comparisons], "notes": self.notes}


def _flags(evaluation: Evaluation, cache: dict[Path, dict[str, Any] | None]) -> dict[str, Any] | None:
    path = evaluation.folder / PER_SAMPLE
    if path not in cache:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            data = None
        ok = isinstance(data, dict) and isinstance(data.get("indices"), list) and isinstance(data.get("correct"), dict)
        cache[path] = data if ok else None
    return cache[path]


def _same_images(a: Evaluation, b: Evaluation) -> bool:
    first, second = a.protocol, b.protocol
    if first.get("dataset") != second.get("dataset") or first.get("split") != second.get("split"):
        return False
    # Recorded fingerprints must agree (older reports have none: the indices then decide).
    return not (first.get("data_fingerprint") and second.get("data_fingerprint")
                and first["data_fingerprint"] != second["data_fingerprint"])


def _points(value: float) -> str:
    return f"{100 * value:+.1f}".replace("-", MINUS)


def _p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3g}"


def pair_text(a: str, b: str, result: PairedDifference) -> str:
    """``A − B = +2.1 points [-0.4, +4.6], McNemar p = 0.11 (...)``, saying so when it is within the noise."""
    low, high = result.interval
    text = (f"{a} {MINUS} {b} = {_points(result.difference)} points [{_points(low)}, {_points(high)}], McNemar "
            f"{_p_text(result.p_value)} (of {result.n} images, {result.only_a} right only for {a}, "
            f"{result.only_b} only for {b})")
    if result.within_noise:
        reasons = [reason for reason, holds in (("the interval contains 0", low <= 0 <= high),
                                                ("p ≥ 0.05", result.p_value >= 0.05)) if holds]
        text += f": within the noise of the test set ({', '.join(reasons)})"
    return text + "."


def mean_text(a: str, b: str, seeds: list[int | None], spread: SeedSpread) -> str:
    assert spread.sd is not None and spread.interval is not None
    low, high = spread.interval
    text = (f"mean over seeds {', '.join(str(seed) for seed in seeds)}: {a} {MINUS} {b} = {_points(spread.mean)} "
            f"points (sd {100 * spread.sd:.1f} over {len(seeds)} seeds; 95% t-interval over seeds "
            f"[{_points(low)}, {_points(high)}])")
    if low <= 0 <= high:
        text += ": within the seed-to-seed noise (the interval contains 0)"
    return text + "."


def _run_pairs(a: SeedGroup, b: SeedGroup) -> list[tuple[int | None, int, int]]:
    """(seed shown, run index of A, run index of B): by seed when either setting has several seeds."""
    if not a.replicated and not b.replicated:
        return [(None, a.members[0], b.members[0])]
    b_by_seed = dict(zip(b.seeds, b.members, strict=True))
    return [(seed, index, b_by_seed[seed]) for seed, index in zip(a.seeds, a.members, strict=True)
            if seed is not None and seed in b_by_seed]


def paired_comparisons(runs: list[Run], groups: list[SeedGroup], attacks: list[str],
                       titles: dict[str, str]) -> PairedSection:
    section = PairedSection()
    if len(groups) < 2:
        return section
    reference = groups[0]
    cache: dict[Path, dict[str, Any] | None] = {}
    for group in groups[1:]:
        pairs = _run_pairs(group, reference)
        if not pairs:
            section.notes.append(f"{group.label} and {reference.label} share no seed, so they are not paired")
            continue
        compared: list[AttackComparison] = []
        for name in attacks:
            found = [_pair(runs[i], runs[j], name, cache) for _, i, j in pairs]
            kept = [(seed, result) for (seed, _, _), result in zip(pairs, found, strict=True) if result is not None]
            if len(kept) != len(pairs):
                if any(run.evaluation is not None and run.evaluation.attack(name) is not None
                       for run in (runs[pairs[0][1]], runs[pairs[0][2]])):
                    section.notes.append(f"{group.label} vs {reference.label} on {titles.get(name, name)}: not "
                                         "paired (not both evaluated with the same attack settings on the same "
                                         f"test images, with {PER_SAMPLE})")
                continue
            texts = tuple(SeedPair(seed, result, pair_text(group.label, reference.label, result))
                          for seed, result in kept)
            spread = seed_spread([pair.result.difference for pair in texts]) if len(texts) > 1 else None
            compared.append(AttackComparison(
                name, titles.get(name, name), texts, spread,
                mean_text(group.label, reference.label, [seed for seed, _ in kept], spread) if spread else None))
        if compared:
            section.comparisons.append(Comparison(group.label, reference.label, tuple(compared)))
    return section


def _pair(a: Run, b: Run, attack: str, cache: dict[Path, dict[str, Any] | None]) -> PairedDifference | None:
    if a.evaluation is None or b.evaluation is None or not _same_images(a.evaluation, b.evaluation):
        return None
    row_a, row_b = a.evaluation.attack(attack), b.evaluation.attack(attack)
    if row_a is None or row_b is None or row_a.get("description") != row_b.get("description"):
        return None
    flags_a, flags_b = _flags(a.evaluation, cache), _flags(b.evaluation, cache)
    if flags_a is None or flags_b is None or flags_a["indices"] != flags_b["indices"]:
        return None
    first, second = flags_a["correct"].get(attack), flags_b["correct"].get(attack)
    if not isinstance(first, list) or not isinstance(second, list) or len(first) != len(second) or not first:
        return None
    return paired_difference(first, second)
