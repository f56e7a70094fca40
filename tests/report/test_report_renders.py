"""`lbgat report` and `lbgat compare`: the report over tiny runs renders every file, its figures
are real pictures, the scatter has one point per run with labels that do not overlap, the HTML opens in
headless Chromium without errors, and a comparison is resumable through the real command line."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from helpers.paths import FIXTURES
from lbgat.cli import main
from lbgat.compare import parse_methods
from lbgat.errors import ConfigError
from lbgat.report import EmbeddingSettings, ReportOptions, build_report
from lbgat.report.figures import ScatterPoint, tradeoff_scatter
from lbgat.report.labels import text_box
from lbgat.report.paper import load_points

TABLES = FIXTURES / "paper_tables.yaml"
TINY = ["--config", "cpu/mnist-5k-demo", "--set", "data.train_size=256", "--set", "data.val_size=64",
        "--set", "schedule.epochs=2", "--set", "schedule.decay_epochs=[1]", "--no-progress"]
EVAL = ["--n", "48", "--check-n", "0", "--batch-size", "48", "--no-progress"]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "lbgat", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny finished runs (two epochs each, a held-out slice), each evaluated; the first also with a
    transfer attack crafted on the second."""
    root = tmp_path_factory.mktemp("runs")
    pgd_at, trades = root / "pgd-at", root / "trades"
    assert main(["train", "--method", "pgd-at", "--out", str(pgd_at), *TINY]) == 0
    assert main(["train", "--method", "trades", "--out", str(trades), *TINY]) == 0
    assert main(["eval", str(pgd_at / "last.pt"), "--attacks", "clean,fgsm,pgd10", "--transfer-from",
                 str(trades / "last.pt"), *EVAL]) == 0
    assert main(["eval", str(trades / "last.pt"), "--attacks", "clean,fgsm,pgd10", *EVAL]) == 0
    return pgd_at, trades


def assert_real_png(path: Path) -> None:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100, path
    assert pixels.std() > 0, f"{path} is blank"


def test_a_report_over_two_tiny_runs_writes_every_file(runs: tuple[Path, Path], tmp_path: Path) -> None:
    """Markdown, HTML, report.json, and every figure as a valid, non-blank PNG and an SVG:
    the trade-off, each run's curves, white-box vs black-box bars (transfer results exist), the t-SNE."""
    out = tmp_path / "report"
    tsne = EmbeddingSettings(classes=3, per_class=8, seed=1)
    result = build_report(list(runs), out, ReportOptions(tsne=tsne))
    ids = [figure.id for figure in result.figures]
    assert ids == ["tradeoff", "curves-pgd-at", "curves-trades-a6", "transfer", "embedding-pgd-at",
                   "embedding-trades-a6"]
    for figure in result.figures:
        assert_real_png(out / "figures" / figure.png_name)
        root = ElementTree.parse(out / "figures" / figure.svg_name).getroot()
        assert root.tag.endswith("svg")
        assert figure.caption and "Figure" not in figure.caption  # the number is the template's
    markdown = result.markdown.read_text()
    for figure in result.figures:
        assert f"](figures/{figure.png_name})" in markdown
    assert "| clean | FGSM | PGD-10 | transfer PGD-20 |" in markdown.replace(" protocol", "")
    assert "L∞ ε=0.3, 10 steps of 0.01, uniform random start" in markdown  # the protocol, eps as a number
    summary = json.loads(result.json.read_text())
    assert [run["label"] for run in summary["runs"]] == ["pgd-at", "trades (α=6)"]
    assert all(len(run["checkpoint"]) == 12 for run in summary["runs"])
    curves = summary["figures"][1]["data"]
    assert curves["epochs"] == [1, 2] and {"loss", "ce_adv"} <= set(curves["terms"])
    assert len(curves["held_out_clean"]) == 2 and len(curves["held_out_robust"]) == 2
    embedding = summary["figures"][4]["data"]
    assert embedding["points"] == 2 * 3 * 8 and embedding["settings"]["seed"] == 1
    assert "perplexity" in summary["figures"][4]["caption"] and "seed 1" in summary["figures"][4]["caption"]


def test_the_scatter_has_one_labelled_point_per_run(runs: tuple[Path, Path], tmp_path: Path) -> None:
    """The trade-off plots exactly the runs' (clean, robust) pairs, each labelled once."""
    result = build_report(list(runs), tmp_path / "report")
    scatter = result.drawn["tradeoff"]
    evaluations = [json.loads((run / "eval-last" / "report.json").read_text()) for run in runs]
    expected = [(100 * ev["results"][0]["accuracy"], 100 * ev["results"][2]["accuracy"]) for ev in evaluations]
    assert [(point["clean"], point["robust"]) for point in scatter.data["runs"]] == expected
    assert scatter.data["paper"] == []
    ax = scatter.figure.axes[0]
    plotted = [tuple(offset) for collection in ax.collections for offset in collection.get_offsets()]
    assert plotted == expected
    assert sorted(text.get_text() for text in ax.texts) == ["pgd-at", "trades (α=6)"]
    assert scatter.data["y_label"] == "robust accuracy (%), PGD-10, ε=0.3"


def test_labels_do_not_overlap_even_when_points_crowd() -> None:
    """Eight runs within a percent of each other, and the paper's CIFAR-10 points: no two
    labels overlap, each stays inside the axes, and one a label cannot be placed is said so."""
    points = [ScatterPoint(f"method-{index} (α={index})", 80 + 0.3 * index, 50 + 0.2 * (index % 3), "#1f77b4")
              for index in range(8)]
    paper = [ScatterPoint(point.label, point.clean, point.robust["pgd20"], "")
             for point in load_points() if point.dataset == "cifar10" and "pgd20" in point.robust]
    drawn = tradeoff_scatter(points, x_label="clean accuracy (%)", y_label="robust accuracy (%)", title="t",
                             paper=paper, paper_legend="paper")
    ax = drawn.figure.axes[0]
    renderer = drawn.figure.canvas.get_renderer()
    boxes = [text_box(text, renderer) for text in ax.texts]
    inside = ax.get_window_extent(renderer)
    assert len(boxes) >= len(points)
    for index, box in enumerate(boxes):
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
        assert not any(box.overlaps(other) for other in boxes[index + 1:]), ax.texts[index].get_text()
    labelled = {text.get_text() for text in ax.texts}
    for label in [p.label for p in [*points, *paper]]:
        assert label in labelled or any(label in note for note in drawn.notes)


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="headless Chromium is not installed: apt-get install chromium")
def test_the_html_opens_in_headless_chromium_without_errors(runs: tuple[Path, Path], tmp_path: Path) -> None:
    """Report.html is self-contained (images as data URIs, nothing fetched), loads in
    headless Chromium with no console message or error, and every image has a non-zero natural size."""
    result = build_report(list(runs), tmp_path / "report")
    html = result.html.read_text()
    assert "http://" not in html and "https://" not in html
    assert html.count('<img src="data:image/png;base64,') == len(result.figures)
    # A copy with a probe script first in <head>: it records errors (script errors, failed loads) and, once
    # the page has loaded, every image's natural size, into the DOM that --dump-dom prints.
    probe = """<script>
      window.__errors = [];
      window.addEventListener("error", function (e) {
        window.__errors.push(e.message || (e.target && (e.target.src || e.target.href)) || "error"); }, true);
      window.addEventListener("load", function () {
        var out = document.createElement("pre"); out.id = "lbgat-probe";
        out.textContent = JSON.stringify({errors: window.__errors, images: Array.prototype.map.call(
          document.images, function (img) { return [img.naturalWidth, img.naturalHeight]; })});
        document.body.appendChild(out); });
    </script>"""
    page = result.out / "probe.html"
    page.write_text(html.replace("<head>", "<head>" + probe, 1))
    completed = subprocess.run(
        ["chromium", "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=10000", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    console = [line for line in completed.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    marker = '<pre id="lbgat-probe">'
    assert marker in completed.stdout, completed.stdout[-2000:]
    found = json.loads(completed.stdout.split(marker, 1)[1].split("</pre>", 1)[0])
    assert found["errors"] == []
    assert len(found["images"]) == len(result.figures)
    assert all(width > 0 and height > 0 for width, height in found["images"]), found["images"]


def test_paper_points_are_the_transcribed_tables() -> None:
    """`--paper`: the shipped points are exactly the numbers of tests/fixtures/paper_tables.yaml."""
    rows = yaml.safe_load(TABLES.read_text())["rows"]
    tables = {}
    for row in rows:
        numbers = row.get("paper") or {}
        if "clean" in numbers and len(numbers) > 1:
            tables.setdefault((row["dataset"], row["row"], row["expect"]["model"]), {}).update(numbers)
    shipped = {(point.dataset, point.row, point.model): {"clean": point.clean, **point.robust}
               for point in load_points()}
    assert shipped == tables


def test_paper_adds_the_papers_points_for_the_same_dataset(runs: tuple[Path, Path], tmp_path: Path) -> None:
    """--paper draws the paper's points for the evaluated dataset, marked as the paper's;
    for a dataset the paper does not report, none, and the caption says so."""
    copy = tmp_path / "cifar-eval"
    shutil.copytree(runs[0] / "eval-last", copy)
    report = json.loads((copy / "report.json").read_text())
    report["protocol"]["dataset"] = "cifar10"
    report["results"] = [row | {"attack": "pgd20", "steps": 20} if row["attack"] == "pgd10" else row
                         for row in report["results"]]
    (copy / "report.json").write_text(json.dumps(report))
    result = build_report([copy], tmp_path / "report", ReportOptions(paper=True))
    scatter = result.drawn["tradeoff"]
    assert ("TRADES (α = 6)", 84.92, 56.61) in [(p["label"], p["clean"], p["robust"]) for p in scatter.data["paper"]]
    assert "LBGAT paper's reported PGD-20 points for cifar10" in result.figures[0].caption
    assert "84.92%" in result.markdown.read_text()
    mnist = build_report(list(runs), tmp_path / "mnist", ReportOptions(paper=True))
    assert mnist.drawn["tradeoff"].data["paper"] == []
    assert "reports no points for mnist-5k" in mnist.figures[0].caption


def test_a_report_folder_holding_other_files_is_refused_untouched(runs: tuple[Path, Path], tmp_path: Path) -> None:
    """Nothing overwritten that lbgat did not write: --out with a user's file refuses before any work."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("an earlier report")
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match="thesis.tex"):
        build_report(list(runs), out)
    assert sorted(path.name for path in out.iterdir()) == ["report.md", "thesis.tex"]
    assert (out / "report.md").read_text() == "an earlier report"


def test_methods_are_parsed_with_their_own_settings() -> None:
    """--methods NAME[:KEY=VALUE...], refused in one line when malformed."""
    entries = parse_methods("natural, trades:alpha=6,lbgat-trades:alpha=0:beta=2")
    assert [(entry.method, entry.overrides, entry.run_folder, entry.label) for entry in entries] == [
        ("natural", [], "natural", "natural"),
        ("trades", ["method.alpha=6"], "trades-alpha6", "trades (α=6)"),
        ("lbgat-trades", ["method.alpha=0", "method.beta=2"], "lbgat-trades-alpha0-beta2",
         "lbgat-trades (α=0, β=2)"),
    ]
    plugged = parse_methods("trades:plugins=[rpat]:rpat.lam=2")[0]
    assert plugged.overrides == ["method.plugins=[rpat]", "method.rpat.lam=2"]
    assert plugged.run_folder == "trades-pluginsrpat-rpat.lam2"
    for text, message in (("nope", "unknown method 'nope'"), ("trades:alpha", "NAME:KEY=VALUE"),
                          ("trades,trades", "twice"), ("", "no method given")):
        with pytest.raises(ConfigError, match=message):
            parse_methods(text)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_compare_end_to_end_resumes_and_reuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Through the real command line: two methods, one recipe, one protocol, one report;
    stopped runs resume (--max-steps raised), finished runs and their evaluations are reused, not redone."""
    out = tmp_path / "cmp"
    command = ["compare", "--methods", "natural,trades:alpha=6", "--config", "cpu/mnist-5k-demo", "--out", str(out),
               "--set", "data.train_size=256", "--set", "data.val_size=0", "--n", "32", "--check-n", "0",
               "--no-progress"]
    first = run_cli(*command, "--max-steps", "1")
    assert first.returncode == 0, first.stderr
    html = out / "report" / "report.html"
    assert first.stdout.strip().splitlines()[-1] == f"open: {html}"
    assert html.is_file() and (out / "report" / "figures" / "tradeoff.png").is_file()
    for folder in ("natural", "trades-alpha6"):
        assert (out / folder / "eval-last" / "report.json").is_file()
    stopped = _sha(out / "trades-alpha6" / "last.pt")

    capsys.readouterr()
    assert main([*command, "--max-steps", "2"]) == 0  # the same command, allowed one more step: resumes
    second = capsys.readouterr()
    assert second.out.count("resumed the stopped run") == 2
    assert _sha(out / "trades-alpha6" / "last.pt") != stopped
    events = [json.loads(line)["event"] for line in (out / "trades-alpha6" / "metrics.jsonl").read_text().splitlines()]
    assert events == ["started", "stopped", "resumed", "stopped"]
    evaluations = {folder: _sha(out / folder / "eval-last" / "report.json") for folder in ("natural", "trades-alpha6")}

    assert main([*command, "--max-steps", "2"]) == 0
    third = capsys.readouterr()
    assert third.out.count("reused the run in") == 2 and third.out.count("reused its evaluation") == 2
    assert "evaluating" not in third.out
    assert evaluations == {folder: _sha(out / folder / "eval-last" / "report.json") for folder in evaluations}
    summary = json.loads((out / "report" / "report.json").read_text())
    assert [run["label"] for run in summary["runs"]] == ["natural", "trades (α=6)"]
    assert len(summary["figures"][0]["data"]["runs"]) == 2

    # Another recipe in the same folder is one line, not a silent mix of two comparisons.
    assert main([*command, "--max-steps", "2", "--set", "optim.lr=0.05"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "trained with other settings" in error and "optim.lr" in error


def test_a_recipes_method_settings_belong_to_the_method_it_names() -> None:
    """One shared recipe for several methods; a TRADES recipe's alpha is TRADES', so PGD-AT
    is not refused an unknown method.alpha, and LBGAT+TRADES takes its own alpha from --methods."""
    from lbgat.compare.engine import shared_recipe
    from lbgat.config import build_config, load_yaml
    from lbgat.recipes import find_recipe
    from lbgat.train.setup import validate

    recipe = load_yaml(find_recipe("paper/cifar10-trades-a6"))
    params = {}
    for entry in parse_methods("pgd-at,trades,lbgat-trades:alpha=0"):
        config = build_config(shared_recipe(recipe, entry.method), {"method.name": entry.method}, entry.overrides)
        validate(config)
        params[entry.method] = config.method.params.get("alpha")
        assert (config.model, config.attack.steps, config.schedule.epochs) == ("wrn-34-10", 10, 100)
    assert params == {"pgd-at": None, "trades": 6.0, "lbgat-trades": 0.0}


def test_plug_ins_are_shown_with_their_settings() -> None:
    """The paper points with a plug-in config: method.plugins and each plug-in's settings under its name."""
    from lbgat.report.collect import Run
    from lbgat.report.summary import hyperparameter_text

    run = Run(None, config={"method": {"name": "trades", "alpha": 6.0, "plugins": ["rpat", "awp"],
                                       "rpat": {"lam": 1.0, "r": 0.5}, "awp": {"gamma": 0.01, "eta": 0.01}}})
    assert run.short_label == "trades+rpat+awp (α=6)"
    assert hyperparameter_text(run) == (
        "α=6; plug-ins: rpat(lam=1.0 on the official code's scale = 0.0625 on the paper's, r=0.5, start_epoch=0), "
        "awp(gamma=0.01, eta=0.01, warmup_epochs=0)")
    vfd = Run(None, config={"method": {"name": "pgd-at", "plugins": ["vfd"], "vfd": {"checkpoint": "n.pt"}}})
    assert "RECONSTRUCTION" in hyperparameter_text(vfd)


def test_runs_without_evaluations_and_bad_inputs(runs: tuple[Path, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A run not yet evaluated still gets its row and curves (the report says why there is no trade-off);
    a path that is neither a run nor an evaluation is one line and exit 2."""
    bare = tmp_path / "bare"
    shutil.copytree(runs[0], bare, ignore=shutil.ignore_patterns("eval-*"))
    result = build_report([bare], tmp_path / "report")
    assert [figure.id for figure in result.figures] == ["curves-pgd-at"]
    assert any("no run has an evaluation" in note for note in result.notes)
    assert "not evaluated" in result.markdown.read_text()
    (tmp_path / "notes.txt").write_text("x")
    for path in (tmp_path / "missing", tmp_path / "notes.txt", tmp_path):
        assert main(["report", str(path), "--out", str(tmp_path / "r2")]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and error.startswith("lbgat report: error:"), error


def test_compare_checks_every_methods_settings_before_training(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A bad setting of the last method is one line before the first method trains."""
    out = tmp_path / "cmp"
    assert main(["compare", "--methods", "natural,trades:nonsense=1", "--config", "cpu/mnist-5k-demo",
                 "--out", str(out), "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "method.nonsense" in error, error
    assert not (out / "natural").exists()


def test_a_run_evaluated_on_its_averaged_weights_says_so_in_its_label() -> None:
    """The EMA of a run is another model than its raw weights: every table and figure label says which."""
    from lbgat.report.collect import Evaluation, Run

    config = {"method": {"name": "trades", "alpha": 6.0}}
    averaged = Run(None, config=config, evaluation=Evaluation(Path("e"), {"checkpoint": {"weights": "ema"}}))
    raw = Run(None, config=config, evaluation=Evaluation(Path("r"), {"checkpoint": {"weights": "raw"}}))
    older = Run(None, config=config, evaluation=Evaluation(Path("o"), {"checkpoint": {}}))
    assert averaged.short_label == "trades (α=6, ema weights)"
    assert raw.short_label == older.short_label == "trades (α=6)"
