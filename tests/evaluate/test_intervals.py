"""Every accuracy's 95% interval (Wilson) and the paired comparison of two models on the same
test images (exact McNemar, Newcombe's paired interval), checked against published values and independent
computations, and as the report states them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lbgat.cli import main
from lbgat.compare.table import fixed_width_table
from lbgat.evaluate.intervals import (
    interval_of,
    mcnemar_exact,
    newcombe_paired,
    paired_difference,
    seed_spread,
    wilson_interval,
)
from lbgat.evaluate.report_files import render_markdown as eval_markdown
from lbgat.report import build_report


def wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The closed form of the Wilson score interval, written independently of scipy."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize(("k", "n", "published"), [
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table II, method 3 (Wilson).
    (81, 263, (0.2553, 0.3662)),
    (15, 148, (0.0624, 0.1605)),
    (0, 20, (0.0, 0.1611)),
    (1, 29, (0.0061, 0.1718)),
])
def test_wilson_interval_matches_published_values(k: int, n: int, published: tuple[float, float]) -> None:
    low, high = wilson_interval(k, n)
    assert low == pytest.approx(published[0], abs=5e-5) and high == pytest.approx(published[1], abs=5e-5)
    assert (low, high) == pytest.approx(wilson_by_hand(k, n), abs=1e-9)


def test_an_interval_is_recorded_or_recomputed_from_the_counts() -> None:
    assert interval_of({"ci95": [0.1, 0.2]}) == (0.1, 0.2)
    # a report.json written before intervals were recorded: from its counts
    assert interval_of({"correct": 957, "total": 1000}) == pytest.approx(wilson_by_hand(957, 1000))
    assert wilson_interval(0, 0) is None and interval_of({"accuracy": 0.5}) is None


def test_mcnemar_and_the_paired_interval_on_a_constructed_pair() -> None:
    """161 images: 59 right for both, 6 only for A, 16 only for B, 80 for neither (Cavo et al. 2012, the paired
    example of Fagerland, Lydersen & Laake 2014, whose Newcombe square-and-add interval is -0.1186 to -0.0046)."""
    a = [1] * 59 + [1] * 6 + [0] * 16 + [0] * 80
    b = [1] * 59 + [0] * 6 + [1] * 16 + [0] * 80
    result = paired_difference(a, b)
    assert (result.both, result.only_a, result.only_b, result.n) == (59, 6, 16, 161)
    assert result.difference == pytest.approx(-10 / 161)
    assert result.interval == pytest.approx((-0.1186, -0.0046), abs=5e-5)
    # The exact McNemar p, independently: twice the binomial(22, 1/2) tail at 6.
    tail = sum(math.comb(22, k) for k in range(0, 7)) / 2**22
    assert result.p_value == pytest.approx(2 * tail, rel=1e-12)
    assert result.p_value > 0.05 and not (result.interval[0] <= 0 <= result.interval[1])
    assert result.within_noise  # p >= 0.05 alone is enough to call it within the noise
    assert mcnemar_exact(0, 0) == 1.0
    # Symmetry: B − A is the mirror image.
    mirrored = paired_difference(b, a)
    assert mirrored.interval == pytest.approx((-result.interval[1], -result.interval[0]))
    assert mirrored.p_value == pytest.approx(result.p_value)
    # Identical models: a zero difference, p = 1, an interval around 0.
    same = newcombe_paired(40, 0, 0, 24)
    assert same[0] < 0 < same[1]


def test_seed_spread_is_the_sample_sd_and_a_t_interval() -> None:
    spread = seed_spread([0.90, 0.91, 0.93])
    assert spread.mean == pytest.approx(0.91333333)
    assert spread.sd == pytest.approx(math.sqrt(((0.90 - 0.91333333) ** 2 + (0.91 - 0.91333333) ** 2
                                                 + (0.93 - 0.91333333) ** 2) / 2))
    half = 4.302652729911275 * spread.sd / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert spread.interval == pytest.approx((spread.mean - half, spread.mean + half))
    assert seed_spread([0.5]).sd is None


def _evaluation(folder: Path, flags: dict[str, list[int]], label: str) -> Path:
    """A minimal evaluation folder as `lbgat eval` writes it: report.json and per_sample.json."""
    folder.mkdir(parents=True)
    n = len(flags["clean"])
    results = [{"attack": name, "kind": "clean" if name == "clean" else "pgd", "steps": 20, "eps": 0.3,
                "step_size": 0.01, "norm": "Linf", "random_start": True, "description": f"{name} settings",
                "accuracy": sum(values) / n, "correct": sum(values), "total": n}
               for name, values in flags.items()]
    protocol = {"dataset": "mnist-5k", "split": "test", "n": n, "data_fingerprint": "abc", "bn_mode": "eval",
                "seed": 0}
    (folder / "report.json").write_text(json.dumps({"results": results, "protocol": protocol,
                                                    "checkpoint": {"method": label, "arch": "tiny-cnn"}}))
    (folder / "per_sample.json").write_text(json.dumps({"indices": list(range(n)), "correct": flags}))
    return folder


def test_the_report_states_paired_differences_and_says_when_they_are_noise(tmp_path: Path) -> None:
    """Reference first; the second differs clearly on PGD, not on clean: the clean line says so in words."""
    n = 200
    reference = {"clean": [1] * 190 + [0] * 10, "pgd20": [1] * 20 + [0] * 180}
    other = {"clean": [1] * 188 + [0] * 2 + [1] * 3 + [0] * 7, "pgd20": [1] * 100 + [0] * 100}
    first = _evaluation(tmp_path / "natural" / "eval-last", reference, "natural")
    second = _evaluation(tmp_path / "pgd-at" / "eval-last", other, "pgd-at")
    result = build_report([first, second], tmp_path / "report")
    markdown = result.markdown.read_text()
    html = result.html.read_text()
    assert "## Paired comparisons (same test images)" in markdown and "Paired comparisons" in html
    clean = paired_difference(other["clean"], reference["clean"])
    robust = paired_difference(other["pgd20"], reference["pgd20"])
    low, high = (100 * value for value in robust.interval)
    assert robust.p_value < 0.001 and not robust.within_noise
    assert (f"pgd-at − natural = +40.0 points [+{low:.1f}, +{high:.1f}], McNemar p < 0.001 (of {n} images, 80 "
            "right only for pgd-at, 0 only for natural).") in markdown
    assert "McNemar p &lt; 0.001" in html and "p < 0.001" not in html  # text reaching HTML is escaped
    assert clean.within_noise and f"McNemar p = {clean.p_value:.3g}" in markdown
    assert "within the noise of the test set (the interval contains 0, p ≥ 0.05)" in markdown
    # Every accuracy carries its interval, in the table and in report.json.
    assert f"95.00% [{100 * wilson_interval(190, n)[0]:.1f}, {100 * wilson_interval(190, n)[1]:.1f}]" in markdown
    summary = json.loads(result.json.read_text())
    assert summary["runs"][0]["ci95"]["clean"] == pytest.approx(list(wilson_interval(190, n)))
    assert summary["paired"]["reference"] == "natural"
    pgd = summary["paired"]["comparisons"][0]["attacks"][1]["per_seed"][0]
    assert pgd["mcnemar_p"] == pytest.approx(robust.p_value) and pgd["only_a_correct"] == 80
    assert "Over seeds" not in markdown  # no seeds, no seed table


def test_an_evaluation_report_shows_each_interval() -> None:
    row = {"attack": "clean", "accuracy": 0.957, "correct": 957, "total": 1000, "description": "clean",
           "seconds": 1.0, "ci95": list(wilson_interval(957, 1000))}
    report = {"results": [row], "protocol": {"n": 1000, "dataset": "d", "data_source": "s", "split": "test",
                                             "examples": "first 1000", "n_available": 1000, "norm": "Linf",
                                             "eps": 0.3, "bn_mode": "eval", "dtype": "float32", "device": "cpu",
                                             "batch_size": 200, "sharding": "one", "random_start": "uniform",
                                             "seed": 0, "reported_iterate": "final", "check_n": 0},
              "checkpoint": {"path": "x.pt", "sha256": "0" * 64, "format": "state dict", "arch": "tiny-cnn"},
              "code_version": {"lbgat": "0"}, "started": "now", "seconds": 1.0}
    assert "| clean | 95.70% | [94.3, 96.8] | 957 / 1000 |" in eval_markdown(report)


def test_the_printed_table_aligns_accuracies_and_intervals() -> None:
    rows = [{"label": "natural", "clean": 0.957, "robust": 0.002, "robust_name": "PGD-40", "train_seconds": 2,
             "clean_ci95": wilson_interval(957, 1000), "robust_ci95": wilson_interval(2, 1000)},
            {"label": "pgd-at", "clean": 0.959, "robust": 0.805, "robust_name": "PGD-40", "train_seconds": 23,
             "clean_ci95": wilson_interval(959, 1000), "robust_ci95": wilson_interval(805, 1000)}]
    lines = fixed_width_table(rows)
    assert lines[1] == "natural   95.70% [94.3, 96.8]    0.20% [0.1, 0.7]          2"
    assert lines[2] == "pgd-at    95.90% [94.5, 97.0]   80.50% [77.9, 82.8]       23"
    # the percent signs and the opening brackets line up down each column
    for mark in ("%", "["):
        assert len({tuple(i for i, char in enumerate(line) if char == mark) for line in lines[:3] if mark in line}) == 1
    assert lines[-1].startswith("[lo, hi]: 95% interval over the n test images")


@pytest.mark.parametrize("seeds", ["0,0", "x", "1,-2", "", "0,,1"])
def test_bad_seeds_are_one_line_and_exit_2(seeds: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--methods", "natural", "--config", "cpu/mnist-5k-demo", "--out", str(tmp_path / "c"),
                 "--seeds", seeds, "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--seeds" in error, error
    assert not (tmp_path / "c").exists()
