"""`lbgat report` says what it used and refuses what it cannot show. The t-SNE caption
states the images per class and the classes actually sampled (not the --tsne-per-class asked for); an
evaluation whose report.json holds a number that is NaN, null, infinite, out of range or text is one line on
stderr naming the file, and nothing is written."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from lbgat.cli import main
from lbgat.report.embedding import sample_text

TINY = ["--config", "cpu/mnist-5k-demo", "--set", "data.train_size=64", "--set", "data.val_size=0",
        "--set", "schedule.epochs=1", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("inputs") / "pgd-at"
    assert main(["train", "--method", "pgd-at", *TINY, "--out", str(out)]) == 0
    assert main(["eval", str(out / "last.pt"), "--attacks", "clean,pgd5", "--n", "32", "--check-n", "0",
                 "--batch-size", "32", "--no-progress"]) == 0
    return out


def test_the_tsne_caption_states_the_images_and_classes_actually_used(run: Path, tmp_path: Path) -> None:
    """--tsne-per-class 100000 on mnist-5k, whose test split holds 100 images of each digit: the caption and
    report.json say 100 of each of the 2 classes, and that 100000 were asked."""
    out = tmp_path / "report"
    assert main(["report", str(run), "--out", str(out), "--tsne", "--tsne-classes", "2",
                 "--tsne-per-class", "100000"]) == 0
    figure = next(item for item in json.loads((out / "report.json").read_text())["figures"]
                  if item["id"].startswith("embedding"))
    settings = figure["data"]["settings"]
    assert list(settings["per_class_used"].values()) == [100, 100] and settings["per_class_asked"] == 100000
    assert figure["data"]["points"] == 2 * 2 * 100
    caption = figure["caption"]
    assert "mnist-5k 100 test images of each of 2 classes (all the test split holds; 100000 were asked)" in caption
    assert "100000 mnist-5k" not in caption and "each of 2 classes" in caption
    assert f"({', '.join(settings['classes'])}; circles" in caption
    assert "100 test images of each of 2 classes" in (out / "report.md").read_text()


def test_a_class_with_fewer_images_than_asked_is_named() -> None:
    assert sample_text({"cat": 50, "dog": 50}, 50) == "50 test images of each of 2 classes"
    assert sample_text({"cat": 50, "dog": 30, "eel": 0}, 50) == (
        "30 to 50 test images of each of 2 classes (50 asked per class; the test split holds fewer of classes "
        "dog (30), eel (0): all of those were used)")


def _set(report: dict[str, Any], where: str, value: Any) -> None:
    if where == "checkpoint.sha256":
        report["checkpoint"]["sha256"] = value
    else:
        report["results"][1][where] = value  # the pgd5 row


@pytest.mark.parametrize(("where", "value", "shown"), [
    ("accuracy", math.nan, "NaN"), ("accuracy", None, "null"), ("accuracy", "0.5", '"0.5"'),
    ("accuracy", math.inf, "Infinity"), ("accuracy", 1.5, "1.5"), ("accuracy", True, "true"),
    ("eps", math.nan, "NaN"), ("steps", "ten", '"ten"'), ("ci95", [math.nan, 0.5], "[NaN, 0.5]"),
    ("checkpoint.sha256", 5, "5"),
])
def test_an_evaluation_holding_a_non_number_is_one_line(run: Path, tmp_path: Path, where: str, value: Any,
                                                         shown: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: `"accuracy": NaN` died in matplotlib ("Axis limits cannot be NaN or Inf") with a traceback."""
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    path = copy / "eval-last" / "report.json"
    report = json.loads(path.read_text())
    _set(report, where, value)
    path.write_text(json.dumps(report))
    before = sorted(item.name for item in copy.rglob("*"))
    out = tmp_path / "report"
    assert main(["report", str(copy), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("lbgat report: error:"), error
    assert str(path) in error and shown in error, error
    assert not out.exists() and sorted(item.name for item in copy.rglob("*")) == before
