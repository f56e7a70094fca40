"""Through the real command line: `lbgat compare --seeds` trains each method once per seed into
OUT/<method>/seed<N>, reports each seed with its interval and the mean ± sd over seeds, pairs each method
with the reference seed by seed, and a rerun reuses every run and evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lbgat.cli import main

METHODS = ["natural", "pgd-at"]
SEEDS = [0, 1]
COMMAND = ["compare", "--methods", ",".join(METHODS), "--config", "cpu/mnist-5k-demo", "--set",
           "data.train_size=256", "--set", "data.val_size=0", "--max-steps", "1", "--n", "64", "--check-n", "0",
           "--attacks", "clean,pgd5", "--seeds", ",".join(map(str, SEEDS)), "--no-progress"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("seeds") / "cmp"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, "-m", "lbgat", *COMMAND, "--out", str(out)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    return out, done


def test_each_method_trains_once_per_seed_in_its_own_folder(compared) -> None:
    out, done = compared
    for method in METHODS:
        assert sorted(path.name for path in (out / method).iterdir()) == [f"seed{seed}" for seed in SEEDS]
        for seed in SEEDS:
            run = out / method / f"seed{seed}"
            assert f"seed: {seed}\n" in (run / "config.yaml").read_text()
            assert (run / "eval-last" / "per_sample.json").is_file()
            results = json.loads((run / "eval-last" / "report.json").read_text())["results"]
            assert all(len(row["ci95"]) == 2 and row["ci95"][0] <= row["accuracy"] <= row["ci95"][1]
                       for row in results)
    assert sorted(json.loads((out / "compare.json").read_text())["runs"]) == [
        f"{method}/seed{seed}" for method in METHODS for seed in SEEDS]
    # The printed table: each seed's line with its interval, then the method's mean ± sd.
    lines = done.stdout.splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("method"))
    assert lines[header].split()[:3] == ["method", "seed", "clean"]
    assert [line.split()[1] for line in lines[header + 1: header + 4]] == ["0", "1", "mean"]
    assert "%  [" not in lines[header + 1] and "% [" in lines[header + 1] and "% ± " in lines[header + 3]


def test_the_report_has_seeds_intervals_and_paired_comparisons(compared) -> None:
    out, _ = compared
    markdown = (out / "report" / "report.md").read_text()
    html = (out / "report" / "report.html").read_text()
    summary = json.loads((out / "report" / "report.json").read_text())
    assert "| natural [seed0] |" in markdown and "| pgd-at [seed1] |" in markdown
    assert "## Over seeds" in markdown and "Over seeds" in html
    seed_rows = {row["label"]: row for row in summary["seeds"]}
    assert set(seed_rows) == {"natural", "pgd-at"}
    clean = seed_rows["pgd-at"]["accuracy"]["clean"]
    assert len(clean["values"]) == 2 and clean["sd"] is not None
    assert f"| pgd-at | 0, 1 | {100 * clean['mean']:.2f} ± {100 * clean['sd']:.2f}% (" in markdown
    assert all(set(run["ci95"]) == {"clean", "pgd5"} for run in summary["runs"])
    assert "In brackets: each accuracy's 95% interval over its n = 64 test images" in markdown
    # Paired: pgd-at against the reference (natural), per seed and the mean over seeds, on both attacks.
    assert "### pgd-at − natural" in markdown
    for attack in ("clean", "PGD-5"):
        for seed in SEEDS:
            assert f"- **{attack}**, seed {seed}: pgd-at − natural = " in markdown
        assert f"- **{attack}**, mean over seeds 0, 1: pgd-at − natural = " in markdown
    assert "McNemar p" in markdown and "McNemar p" in html
    compared_attacks = summary["paired"]["comparisons"][0]["attacks"]
    assert [len(attack["per_seed"]) for attack in compared_attacks] == [2, 2]
    # The trade-off: one point per method (the mean, with its sd) and each seed drawn faintly.
    tradeoff = next(figure for figure in summary["figures"] if figure["id"] == "tradeoff")
    assert [point["label"] for point in tradeoff["data"]["runs"]] == ["natural", "pgd-at"]
    assert len(tradeoff["data"]["seeds"]) == 4 and "mean over its seeds" in tradeoff["caption"]


def test_a_rerun_reuses_everything(compared, capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = compared
    evaluations = {path: path.read_bytes() for path in out.glob("*/seed*/eval-last/report.json")}
    assert main([*COMMAND, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    jobs = len(METHODS) * len(SEEDS)
    assert printed.count("reused the run in") == jobs and printed.count("reused its evaluation") == jobs
    assert "evaluating" not in printed
    assert evaluations == {path: path.read_bytes() for path in evaluations}


def test_the_two_layouts_never_share_an_out(compared, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --seeds on a folder of seed runs (and --set seed with --seeds) is one line, before any work."""
    out, _ = compared
    without = [part for part in COMMAND if part not in ("--seeds", ",".join(map(str, SEEDS)))]
    assert main([*without, "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "holds the seed folders" in error, error
    assert main([*COMMAND, "--out", str(out), "--set", "seed=3"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--seeds sets each run's seed" in error, error


def test_seeds_on_a_folder_of_single_runs_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    (out / "natural").mkdir(parents=True)
    (out / "natural" / "config.yaml").write_text("seed: 1\n")
    assert main([*COMMAND, "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "holds a run of a comparison without --seeds" in error, error
    assert sorted(path.name for path in out.iterdir()) == ["natural"]
