"""How sure an accuracy is: the 95% interval of one accuracy over its n test images, and of the difference
between two models measured on the same images.

- One accuracy, k correct of n: the Wilson score interval (``scipy.stats.binomtest(k, n).proportion_ci``).
  Unlike the textbook p ± 1.96·sqrt(p(1-p)/n) it stays inside [0, 1] and keeps its coverage at 0% and 100%,
  where robust accuracies often sit.
- Two models on the same n images: the exact McNemar test (a two-sided binomial test, ``scipy.stats.binomtest``,
  of the b images only A gets right against the c images only B gets right, p = 1/2) and Newcombe's
  square-and-add interval for the paired difference (Newcombe 1998, method 10; Fagerland, Lydersen & Laake 2014
  recommend it), built from the two Wilson intervals. scipy has no paired-difference interval, so that one
  formula is written here and documented in docs/evaluation.md.

Both cover the sampling of the test images only: how much the number would move on another n images from
the same distribution, for these trained weights. Training another seed moves it too (see
:func:`seed_spread`); the intervals say nothing about that.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CONFIDENCE = 0.95


def wilson_interval(correct: int, total: int, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The Wilson score interval of ``correct / total`` (fractions); None for an empty evaluation."""
    if total <= 0:
        return None
    from scipy.stats import binomtest  # imported here: scipy takes a while to load, and most commands never ask

    interval = binomtest(int(correct), int(total)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def interval_of(row: dict[str, Any]) -> tuple[float, float] | None:
    """A result row's 95% interval: as recorded (``ci95``), else from its counts (a report.json written before
    intervals were recorded still gets one)."""
    recorded = row.get("ci95")
    if isinstance(recorded, list | tuple) and len(recorded) == 2:
        return float(recorded[0]), float(recorded[1])
    if isinstance(row.get("correct"), int) and isinstance(row.get("total"), int):
        return wilson_interval(row["correct"], row["total"])
    return None


def interval_text(interval: tuple[float, float] | None) -> str:
    """``[94.3, 96.8]``: an interval of fractions in percent, one decimal (the width of the interval makes
    more digits noise)."""
    return "" if interval is None else f"[{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def accuracy_text(accuracy: float, interval: tuple[float, float] | None) -> str:
    """``95.70% [94.3, 96.8]``."""
    return f"{100 * accuracy:.2f}%" + (f" {interval_text(interval)}" if interval else "")


@dataclass(frozen=True)
class PairedDifference:
    """A − B on the same n images: b images only A classifies correctly, c only B."""

    n: int
    both: int  # correct for A and B
    only_a: int  # b
    only_b: int  # c
    difference: float  # (b − c) / n, a fraction
    interval: tuple[float, float]  # Newcombe's square-and-add, fractions
    p_value: float  # exact McNemar, two-sided

    @property
    def within_noise(self) -> bool:
        return self.interval[0] <= 0 <= self.interval[1] or self.p_value >= 1 - CONFIDENCE

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "both_correct": self.both, "only_a_correct": self.only_a,
                "only_b_correct": self.only_b, "difference": self.difference, "ci95": list(self.interval),
                "ci_method": "Newcombe square-and-add (Wilson-based, paired)", "mcnemar_p": self.p_value,
                "test": "exact McNemar (two-sided binomial test on the discordant pairs)",
                "within_noise": self.within_noise}


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p: are the b and c discordant images a fair coin's split? 1 when there are none."""
    if only_a + only_b == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def paired_difference(a_correct: Sequence[int | bool], b_correct: Sequence[int | bool],
                      confidence: float = CONFIDENCE) -> PairedDifference:
    """A − B from per-image correctness flags of the same images, in the same order."""
    if len(a_correct) != len(b_correct) or not a_correct:
        raise ValueError("paired flags must be non-empty and of the same length")
    both = only_a = only_b = neither = 0
    for a, b in zip(a_correct, b_correct, strict=True):
        if a and b:
            both += 1
        elif a:
            only_a += 1
        elif b:
            only_b += 1
        else:
            neither += 1
    n = len(a_correct)
    return PairedDifference(n, both, only_a, only_b, (only_a - only_b) / n,
                            newcombe_paired(both, only_a, only_b, neither, confidence),
                            mcnemar_exact(only_a, only_b))


def newcombe_paired(both: int, only_a: int, only_b: int, neither: int,
                    confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Newcombe's square-and-add interval for p_A − p_B from a paired 2x2 table (Newcombe 1998, method 10).

    Each marginal accuracy gets its Wilson interval (l, u); the distances from the estimates are combined as
    for independent samples, less a correction for their correlation φ, the phi coefficient of the 2x2 table
    with Newcombe's continuity correction (A = ad − bc shrunk by n/2 when positive, 0 in between)."""
    n = both + only_a + only_b + neither
    a_total, b_total = both + only_a, both + only_b
    p_a, p_b = a_total / n, b_total / n
    low_a, high_a = wilson_interval(a_total, n, confidence)  # type: ignore[misc]
    low_b, high_b = wilson_interval(b_total, n, confidence)  # type: ignore[misc]
    margins = a_total * (n - a_total) * b_total * (n - b_total)
    cross = both * neither - only_a * only_b
    if margins == 0 or 0 <= cross <= n / 2:
        phi = 0.0
    else:
        phi = (cross - n / 2 if cross > n / 2 else cross) / math.sqrt(margins)
    below = (p_a - low_a) ** 2 - 2 * phi * (p_a - low_a) * (high_b - p_b) + (high_b - p_b) ** 2
    above = (p_b - low_b) ** 2 - 2 * phi * (p_b - low_b) * (high_a - p_a) + (high_a - p_a) ** 2
    difference = p_a - p_b
    # |φ| <= 1 keeps both sums >= 0; max() only absorbs float rounding.
    return difference - math.sqrt(max(below, 0.0)), difference + math.sqrt(max(above, 0.0))


@dataclass(frozen=True)
class SeedSpread:
    """Values of one quantity over training seeds: mean, sample standard deviation and the t interval of the
    mean (None with one seed)."""

    values: tuple[float, ...]
    mean: float
    sd: float | None
    interval: tuple[float, float] | None

    def to_dict(self) -> dict[str, Any]:
        return {"values": list(self.values), "mean": self.mean, "sd": self.sd,
                "ci95_of_mean": list(self.interval) if self.interval else None,
                "sd_ddof": 1, "interval_method": "Student t over seeds"}


def seed_spread(values: Sequence[float], confidence: float = CONFIDENCE) -> SeedSpread:
    """Mean ± sample sd (n − 1) over seeds, and the Student-t interval of the mean (mean ± t·sd/√k)."""
    if not values:
        raise ValueError("no values")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return SeedSpread(tuple(values), mean, None, None)
    from scipy.stats import t

    sd = statistics.stdev(values)
    half = float(t.ppf(0.5 + confidence / 2, len(values) - 1)) * sd / math.sqrt(len(values))
    return SeedSpread(tuple(values), mean, sd, (mean - half, mean + half))


def spread_text(spread: SeedSpread, *, scale: float = 100.0, unit: str = "%") -> str:
    """``90.30 ± 0.52%`` (``90.30%`` with one seed)."""
    if spread.sd is None:
        return f"{scale * spread.mean:.2f}{unit}"
    return f"{scale * spread.mean:.2f} ± {scale * spread.sd:.2f}{unit}"
