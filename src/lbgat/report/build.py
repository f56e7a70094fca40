"""``lbgat report``: runs and evaluations in, one report folder out (report.md, report.html, report.json and
every figure as PNG and SVG under figures/)."""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LbgatError
from ..evaluate.doubts import LEGEND, doubts_of, mark_text
from ..evaluate.intervals import interval_of
from ..methods import get_method
from ..storage.files import check_writable, failed_writes, strict_json
from ..storage.locks import folder_lock
from ..version import __version__
from .collect import Run, collect
from .embedding import EmbeddingSettings, logit_embedding, sample_text
from .figures import (
    DPI,
    Drawn,
    ScatterPoint,
    TransferBar,
    embedding_plot,
    run_color,
    tradeoff_scatter,
    training_curves,
    transfer_bars,
)
from .outputs import prepare_out, write_figure_files, write_report_files
from .paired import paired_comparisons
from .paper import METRIC_TITLES, PAPER_PROTOCOL, SOURCE, paper_metric, points_for
from .render import render_html, render_markdown
from .seeds import SeedGroup, seed_groups, seed_points, seed_rows
from .summary import (
    attack_headers,
    attack_kind,
    attack_settings,
    attack_title,
    common_robust_attack,
    data_text,
    doubt_notes,
    eps_text,
    strongest,
    table_attacks,
    table_row,
)


@dataclass(frozen=True)
class ReportOptions:
    paper: bool = False  # add the LBGAT paper's reported points for the same dataset
    tsne: EmbeddingSettings | None = None  # the logit embedding, on request (it runs the models)
    title: str | None = None


@dataclass
class FigureFile:
    id: str
    title: str
    caption: str
    png_name: str
    svg_name: str
    png_bytes: bytes = field(repr=False)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def display_width(self) -> int:
        """CSS pixels to show the PNG at its drawn size (drawn at DPI, shown at 96 per inch: sharp on
        high-density screens, never wider than the page)."""
        pixels = int.from_bytes(self.png_bytes[16:20], "big")  # the PNG header's width
        return round(pixels * 96 / DPI)


@dataclass
class ReportResult:
    out: Path
    markdown: Path
    html: Path
    json: Path
    runs: list[Run]
    figures: list[FigureFile]
    drawn: dict[str, Drawn]  # by figure id, for callers and tests that inspect what was plotted
    notes: list[str]


def build_report(inputs: list[Path], out: Path, options: ReportOptions = ReportOptions(),
                 *, progress: bool = False) -> ReportResult:
    consequence = (f"the runs and evaluations it reads are unchanged, but the report in {out} is incomplete: free "
                   "some space, then run the same command again")
    check_writable(out, "report folder")  # before the lock creates the folder
    with folder_lock(out, "report folder", through_link=False), failed_writes(out, consequence):
        return _build_report(inputs, out, options, progress)


def _build_report(inputs: list[Path], out: Path, options: ReportOptions, progress: bool) -> ReportResult:
    runs = collect(inputs)
    groups = seed_groups(runs)  # runs that differ only in their seed, summarised over seeds
    prepare_out(out)
    if options.tsne is not None:
        options.tsne.check()
    figures: list[FigureFile] = []
    drawn: dict[str, Drawn] = {}
    notes: list[str] = []
    slugs = _slugs(runs)
    paper_rows: list[dict[str, Any]] = []
    paper_metric_name = ""

    scatter = _tradeoff(runs, options.paper, notes, groups)
    if scatter is not None:
        figure, plot, paper_rows, paper_metric_name = scatter
        figures.append(figure)
        drawn[figure.id] = plot
    for index, run in enumerate(runs):
        if run.epochs:
            figure, plot = _curves(run, slugs[index], index)
            figures.append(figure)
            drawn[figure.id] = plot
        elif run.run_dir is not None:
            notes.append(f"{run.label}: no completed epoch in {run.run_dir / 'metrics.jsonl'}, so no training curves")
    transfer = _transfer(runs)
    if transfer is not None:
        figures.append(transfer[0])
        drawn[transfer[0].id] = transfer[1]
    if options.tsne is not None:
        for index, run in enumerate(runs):
            if progress:
                print(f"report: t-SNE of {run.label}'s logits", flush=True)
            figure, plot = _embedding(run, slugs[index], options.tsne)
            figures.append(figure)
            drawn[figure.id] = plot
    for plot in drawn.values():
        notes += plot.notes

    files: dict[str, bytes] = {}
    for figure in figures:
        files[figure.png_name] = figure.png_bytes
        files[figure.svg_name] = drawn[figure.id].svg()
    write_figure_files(out, files)

    attacks = table_attacks(runs)
    headers = attack_headers(runs, attacks)
    rows = [table_row(run, attacks) for run in runs]
    paired = paired_comparisons(runs, groups, attacks, headers)
    context = {
        "title": options.title or _title(runs),
        "generated": f"Written by lbgat {__version__} (lbgat report) on {time.strftime('%Y-%m-%d %H:%M %Z')}",
        "inputs": [str(path) for path in inputs],
        "attacks": attacks,
        "headers": headers,
        "rows": rows,
        "seed_rows": seed_rows(runs, groups, attacks),
        "paired": paired,
        "n_text": _n_text(runs),
        "doubt_legend": LEGEND,
        "doubt_notes": doubt_notes(rows, headers),
        "figures": figures,
        "notes": notes,
        "paper_points": paper_rows,
        "paper_metric_title": METRIC_TITLES.get(paper_metric_name, paper_metric_name),
        "paper_source": SOURCE,
        "paper_protocol": PAPER_PROTOCOL,
    }
    markdown, html, summary = out / "report.md", out / "report.html", out / "report.json"
    write_report_files(out, {markdown.name: render_markdown(context), html.name: render_html(context),
                             summary.name: strict_json(_summary(runs, context, figures), indent=2) + "\n"})
    return ReportResult(out, markdown, html, summary, runs, figures, drawn, notes)


def _title(runs: list[Run]) -> str:
    datasets = sorted({run.dataset for run in runs})
    return f"lbgat report: {len(runs)} run{'s' if len(runs) != 1 else ''} on {', '.join(datasets)}"


def _slugs(runs: list[Run]) -> list[str]:
    slugs: list[str] = []
    for run in runs:
        readable = run.label.lower().replace("α", "a").replace("β", "b").replace("=", "")  # trades (α=6): trades-a6
        base = re.sub(r"[^a-z0-9.]+", "-", readable).strip("-.") or "run"
        slug, number = base, 2
        while slug in slugs:
            slug, number = f"{base}-{number}", number + 1
        slugs.append(slug)
    return slugs


def _figure(figure_id: str, title: str, caption: str, plot: Drawn) -> FigureFile:
    return FigureFile(figure_id, title, caption, f"{figure_id}.png", f"{figure_id}.svg", plot.png(), plot.data)


def _tradeoff(runs: list[Run], with_paper: bool, notes: list[str], groups: list[SeedGroup]
              ) -> tuple[FigureFile, Drawn, list[dict[str, Any]], str] | None:
    evaluated = [(index, run) for index, run in enumerate(runs)
                 if run.evaluation is not None and run.evaluation.accuracy("clean") is not None]
    if not evaluated:
        notes.append("no run has an evaluation with clean accuracy, so there is no trade-off figure "
                     "(evaluate with: lbgat eval RUN/last.pt)")
        return None
    common = common_robust_attack([run for _, run in evaluated])
    points: list[ScatterPoint] = []
    by_run: dict[int, ScatterPoint] = {}
    described: list[str] = []
    for index, run in evaluated:
        assert run.evaluation is not None
        row = run.evaluation.attack(common) if common else strongest(run.evaluation)
        if row is None:
            notes.append(f"{run.label}: no robust accuracy in its evaluation, so it is not in the trade-off figure")
            continue
        points.append(_point(run, row, index))
        by_run[index] = points[-1]
        described.append(f"{data_text(run.evaluation)}; {attack_title(row)}: {attack_settings(row)}")
    if not points:
        return None
    first = evaluated[0][1].evaluation
    assert first is not None
    row = first.attack(common) if common else strongest(first)
    assert row is not None
    same_protocol = len(set(described)) == 1
    y_name = attack_title(row) if common else "strongest white-box attack of each run"
    y_label = f"robust accuracy (%), {y_name}" + (f", ε={eps_text(row.get('eps'))}" if common else "")
    protocol = described[0] if same_protocol else "protocols differ between runs (see the table of runs)"
    dataset = first.protocol.get("dataset", "?")
    paper: list[ScatterPoint] = []
    paper_rows: list[dict[str, Any]] = []
    metric = paper_metric(common)
    caption_paper = ""
    if with_paper:
        found = points_for(dataset, metric)
        if found:
            paper = [ScatterPoint(point.label, point.clean, point.robust[metric], "") for point in found]
            paper_rows = [{"row": point.row, "model": point.model, "tables": ", ".join(map(str, point.tables)),
                           "clean": point.clean, "robust": point.robust[metric]} for point in found]
            mismatch = "" if metric == common else (
                f" The paper's points are {METRIC_TITLES[metric]}, not this report's {y_name}: compare with care.")
            caption_paper = (f" Hollow grey diamonds: the LBGAT paper's reported {METRIC_TITLES[metric]} points for "
                             f"{dataset} ({SOURCE}; {PAPER_PROTOCOL}; WRN-34-10 unless marked WRN-34-20), "
                             f"as printed, not rerun.{mismatch}")
        else:
            caption_paper = f" The LBGAT paper reports no points for {dataset}, so none are drawn (--paper)."
    replicated = any(group.replicated for group in groups)
    faint: list[ScatterPoint] = []
    if replicated:
        points, faint = seed_points(by_run, groups)
    plot = tradeoff_scatter(points, x_label="clean accuracy (%)", y_label=y_label, faint=faint,
                            title=f"Clean vs robust accuracy, {dataset} test (n = {first.protocol.get('n', '?')})",
                            paper=paper, paper_legend=f"LBGAT paper, reported ({METRIC_TITLES[metric]}, "
                                                      "WRN-34-10/20)")
    how = ("one point per setting (the mean over its seeds, with error bars of ± one standard deviation over "
           "seeds in each direction, and each seed's own point drawn faintly in the same colour"
           if replicated else "one point per run (one seed each")
    caption = (f"Clean versus robust accuracy, {how}; up and to the right is better). "
               f"Protocol: {protocol}; model in eval mode.{_doubt_caption([*points, *faint])}{caption_paper}")
    return _figure("tradeoff", "Trade-off: clean vs robust accuracy", caption, plot), plot, paper_rows, metric


def _point(run: Run, row: dict[str, Any], index: int) -> ScatterPoint:
    """A run's point, with the marks of the checks that doubt its robust number and the stronger attack's number."""
    assert run.evaluation is not None
    doubts = doubts_of(run.evaluation.data).get(row["attack"], [])
    strong = next((doubt for doubt in doubts if doubt.strong_accuracy is not None), None)
    return ScatterPoint(run.label, 100 * run.evaluation.accuracy("clean"), 100 * row["accuracy"], run_color(index),
                        doubt=mark_text(doubts), strong=100 * strong.strong_accuracy if strong else None,
                        strong_name=(strong.strong_attack or "") if strong else "")


def _doubt_caption(points: list[ScatterPoint]) -> str:
    doubted = [point for point in points if point.doubt]
    if not doubted:
        return ""
    text = (" A red ring marks a robust number that a sanity check of its evaluation doubts ("
            + "; ".join(f"{point.label}: {point.doubt}" for point in doubted) + ")")
    if any(point.strong is not None for point in doubted):
        text += ("; a dashed red whisker goes down to the accuracy under a stronger attack (PGD with 100 or more "
                 "steps and 5 restarts), measured on the first examples the checks run on")
    return text + "."


def _curves(run: Run, slug: str, index: int) -> tuple[FigureFile, Drawn]:
    val = run.config.get("val") or {}
    attack = run.config.get("attack") or {}
    steps = val.get("steps")
    robust_name = f"PGD-{steps}" if steps else "PGD"
    held_out = next((record["val"]["n"] for record in run.epochs if (record.get("val") or {}).get("n")), None)
    plot = training_curves(run.label, run.epochs, robust_name=robust_name, color=run_color(index))
    log_scale = plot.data["loss_scale"] == "log"
    validation = (f"accuracy on {held_out} training images held out of training, clean and under {robust_name} "
                  f"(L∞ ε={eps_text(val.get('eps'))}, steps of {eps_text(val.get('step_size'))}, uniform random "
                  "start, eval mode), measured after each validated epoch (right)") if held_out else (
                  "no held-out accuracy: this run held no training images out (data.val_size = 0)")
    objective = _training_objective(run)
    training = (f"Training attack: {objective.upper()}-PGD, {attack.get('steps', '?')} steps of "
                f"{eps_text(attack.get('step_size'))}, ε={eps_text(attack.get('eps'))}, {attack.get('start', '?')} "
                f"start, BN in {attack.get('bn_mode', '?')} mode") if attack and objective else ""
    caption = (f"Training of {run.label} (run {run.run_dir}): each loss term's mean over the epoch's training "
               f"batches{' (left)' if held_out else ''}, the method's own terms (e.g. ce, kl, mse) and their weighted "
               f"sum 'loss'{' (on a log scale: the terms differ by more than 100x)' if log_scale else ''}; "
               f"{validation}." + (f" {training}." if training else ""))
    return _figure(f"curves-{slug}", f"Training curves: {run.label}", caption, plot), plot


def _training_objective(run: Run) -> str | None:
    """The loss the run's training attack ascends (None: the method trains on clean inputs only)."""
    try:
        method = get_method(run.method_name)
    except LbgatError:  # a method this lbgat does not know (a run from another version)
        return None
    chosen = (run.config.get("attack") or {}).get("objective")
    return chosen if chosen not in (None, "auto") else method.attack_objective


def _transfer(runs: list[Run]) -> tuple[FigureFile, Drawn] | None:
    bars: list[TransferBar] = []
    sources: list[str] = []
    labels: list[str] = []
    for run in runs:
        evaluation = run.evaluation
        if evaluation is None:
            continue
        black = next((row for row in evaluation.results if attack_kind(row) == "transfer"), None)
        white = strongest(evaluation)
        clean = evaluation.accuracy("clean")
        if black is None or white is None or clean is None:
            continue
        bars.append(TransferBar(run.label, 100 * clean, 100 * white["accuracy"], attack_title(white),
                                100 * black["accuracy"], attack_title(black)))
        source = evaluation.data.get("transfer", {})
        sources.append(f"crafted on the {source.get('source_arch', '?')} {source.get('source', '?')} "
                       f"({attack_settings(black)})")
        labels.append(run.label)
    if not bars:
        return None
    plot = transfer_bars(bars, title="White-box vs black-box (transfer) accuracy")
    caption = ("Accuracy on clean inputs, under the strongest white-box attack on the model itself, and under the "
               "black-box transfer attack (adversarial inputs crafted on another model, then given to this one), as "
               "in LBGAT Fig. 5. A black-box accuracy far above the white-box one is expected; one below it would "
               "point to gradient masking. Transfer attack: " + _per_run(labels, sources) + ".")
    return _figure("transfer", "White-box vs black-box accuracy", caption, plot), plot


def _per_run(labels: list[str], texts: list[str]) -> str:
    """One text when every run has the same, else each run's."""
    if len(set(texts)) == 1:
        return texts[0] + (" for every run" if len(texts) > 1 else "")
    return "; ".join(f"{label}: {text}" for label, text in zip(labels, texts, strict=True))


def _embedding(run: Run, slug: str, settings: EmbeddingSettings) -> tuple[FigureFile, Drawn]:
    embedding = logit_embedding(run, settings)
    plot = embedding_plot(run.label, embedding.coordinates, embedding.labels, embedding.adversarial,
                          embedding.class_names, attack_name=embedding.attack)
    plot.data["settings"] = embedding.settings
    recorded = embedding.settings
    tsne = recorded["tsne"]
    shown = [name for name in recorded["classes"] if recorded["per_class_used"].get(name)]
    caption = (f"t-SNE of the logits of {run.label} on {recorded['dataset']} "
               f"{sample_text(recorded['per_class_used'], recorded['per_class_asked'])}, sampled with seed "
               f"{recorded['seed']} ({', '.join(shown)}; circles, left) and on their adversarial versions (crosses, "
               f"right: {recorded['attack']}), as in LBGAT Figs. 3-4. Clean and adversarial logits are embedded "
               f"together, so the panels share coordinates: scikit-learn TSNE, perplexity {tsne['perplexity']:g}, "
               f"PCA initialisation, learning rate auto, {tsne['max_iter']} iterations, random_state "
               f"{tsne['random_state']}, on raw logits. t-SNE axes have no unit.")
    return _figure(f"embedding-{slug}", f"Logit embedding: {run.label}", caption, plot), plot


def _summary(runs: list[Run], context: dict[str, Any], figures: list[FigureFile]) -> dict[str, Any]:
    """report.json: the table and every figure's plotted data, for scripts (and tests)."""
    return {
        "lbgat_summary_report": 1,
        "title": context["title"],
        "inputs": context["inputs"],
        "runs": [{**asdict(row), "run_dir": str(run.run_dir) if run.run_dir else None,
                  "evaluation": str(run.evaluation.folder) if run.evaluation else None, "ci95": _intervals(run)}
                 for run, row in zip(runs, context["rows"], strict=True)],
        "seeds": [row.to_dict() for row in context["seed_rows"]],
        "paired": context["paired"].to_dict(),
        "figures": [{"id": figure.id, "title": figure.title, "caption": figure.caption,
                     "png": f"figures/{figure.png_name}", "svg": f"figures/{figure.svg_name}",
                     "data": _plain(figure.data)} for figure in figures],
        "notes": context["notes"],
    }


def _intervals(run: Run) -> dict[str, list[float] | None]:
    """Each accuracy's 95% Wilson interval over its test images (fractions), by attack name."""
    rows = run.evaluation.results if run.evaluation else []
    return {row["attack"]: (list(interval) if (interval := interval_of(row)) else None) for row in rows}


def _n_text(runs: list[Run]) -> str:
    """The numbers of test images the accuracies are measured on, for the sentence under the table."""
    sizes = sorted({str(run.evaluation.protocol.get("n", "?")) for run in runs if run.evaluation is not None})
    return " or ".join(sizes)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
