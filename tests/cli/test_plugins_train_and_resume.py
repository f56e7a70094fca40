"""Each new method, and each plug-in on pgd-at, trades and lbgat-trades, trains a few
steps on cifar10-mini from the command line, resumes exactly (after a stop and after a kill), and evaluates;
the evaluation report says which plug-ins trained the model (RPAT's lambda on both scales, VFD labelled
as a reconstruction)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.cli_runs import assert_same_training_state, run_cli
from helpers.data_fixtures import cifar10_mini_root
from lbgat.checkpoints.checkpoint import load_checkpoint
from lbgat.cli import main

SMALL = ["--dataset", "cifar10", "--model", "wrn-10-1", "--batch-size", "16", "--no-progress",
         "--set", "data.val_size=0", "--set", "attack.steps=2", "--set", "data.train_size=64"]


def data() -> list[str]:
    return ["--data-root", str(cifar10_mini_root())]


@pytest.fixture(scope="module")
def natural(tmp_path_factory) -> Path:
    """A briefly trained natural model of the student's architecture: VFD's teacher."""
    out = tmp_path_factory.mktemp("natural") / "run"
    assert main(["train", "--method", "natural", *SMALL, *data(), "--max-steps", "2", "--out", str(out)]) == 0
    return out / "last.pt"


# Every plug-in on each of the three hosts, and the new methods. One pair per plug-in (and per host) runs by
# default; the rest are marked slow (-m slow) to keep the default run short on 2 CPU cores.
DEFAULT = {("pgd-at", "awp"), ("trades", "rpat"), ("lbgat-trades", "vfd"), ("mart", None), ("iseat", None)}
PAIRS = [(host, plugin) for host in ("pgd-at", "trades", "lbgat-trades") for plugin in ("rpat", "vfd", "awp")]
CASES = [pytest.param(host, plugin, marks=() if (host, plugin) in DEFAULT else pytest.mark.slow)
         for host, plugin in [*PAIRS, ("mart", None), ("iseat", None)]]


def plugin_flags(plugin: str | None, natural: Path) -> list[str]:
    if plugin is None:
        return []
    flags = ["--plugin", plugin]
    if plugin == "vfd":
        flags += ["--set", f"method.vfd.checkpoint={natural}"]
    return flags


def method_flags(host: str) -> list[str]:
    flags = ["--method", host]
    if host == "lbgat-trades":
        flags += ["--teacher", "wrn-10-1"]
    if host == "iseat":  # lambda and gamma active from the first epoch (the official default waits 100)
        flags += ["--set", "method.lam=[0.1]", "--set", "method.gamma=[0.007]"]
    return flags


@pytest.mark.parametrize(("host", "plugin"), CASES)
def test_trains_resumes_exactly_and_evaluates(host: str, plugin: str | None, natural: Path, tmp_path: Path) -> None:
    common = ["train", *method_flags(host), *plugin_flags(plugin, natural), *SMALL, *data()]
    split, straight = tmp_path / "split", tmp_path / "straight"
    assert main([*common, "--max-steps", "2", "--out", str(split)]) == 0
    assert main([*common, "--max-steps", "3", "--out", str(split), "--resume"]) == 0
    assert main([*common, "--max-steps", "3", "--out", str(straight)]) == 0
    assert_same_training_state(split / "last.pt", straight / "last.pt")
    config = load_checkpoint(split / "last.pt").meta["config"]["method"]
    assert config["plugins"] == ([plugin] if plugin else [])

    assert main(["eval", str(split / "last.pt"), "--attacks", "clean,pgd5", "--n", "16", "--check-n", "0",
                 "--no-progress", "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert [row["attack"] for row in report["results"]] == ["clean", "pgd5"]
    assert report["checkpoint"]["method"] == host
    markdown = (tmp_path / "eval" / "report.md").read_text()
    assert f"({host}{'+' + plugin if plugin else ''})" in markdown.splitlines()[0]
    if plugin == "rpat":
        assert "lam=1.0 on the official code's scale = 0.0625 on the paper's" in markdown
    if plugin == "vfd":
        assert "RECONSTRUCTION" in markdown


@pytest.mark.parametrize(("host", "plugin"), [("pgd-at", "awp"), pytest.param("iseat", None, marks=pytest.mark.slow)])
def test_a_killed_run_with_a_weight_perturbation_resumes_exactly(host: str, plugin: str | None, natural: Path,
                                                                   tmp_path: Path) -> None:
    """SIGKILL at any moment after the first per-step checkpoint: the checkpoint holds the unperturbed weights
    (the perturbation is removed before any save), so the resumed run equals an uninterrupted one."""
    common = ["train", *method_flags(host), *plugin_flags(plugin, natural), *SMALL, *data(),
              "--checkpoint-every", "1"]
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    process = subprocess.Popen([sys.executable, "-m", "lbgat", *common, "--max-steps", "200", "--out", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (killed / "last.pt").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read() if process.stderr else ""
    step = load_checkpoint(killed / "last.pt").meta["position"]["global_step"]
    resumed = run_cli(*common, "--max-steps", str(step + 2), "--out", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert main([*common, "--max-steps", str(step + 2), "--out", str(straight)]) == 0
    assert_same_training_state(killed / "last.pt", straight / "last.pt")
