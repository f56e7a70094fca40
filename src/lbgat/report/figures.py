"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no pyplot, no display):
the clean-vs-robust trade-off (LBGAT Fig. 1), training curves per run, white-box vs black-box bars
(Fig. 5) and the logit embedding (Figs. 3-4). Each returns a :class:`Drawn` figure with the data it plots."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .labels import place_labels

DPI = 150
RUN_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
              "#bcbd22", "#7f7f7f")
PAPER_COLOR = "#555555"
DOUBT_COLOR = "#b00020"  # a number a sanity check doubts: its ring, whisker and note
# Labels, titles and legends show the user's text (folder names, settings, class names): matplotlib would
# read text between two "$" as math, and a "$" of theirs could fail the report. None of lbgat's text is math.
PLAIN = {"parse_math": False}
# Figures carry no creation date, so that the same inputs give the same files.
SVG_METADATA = {"Date": None}
PNG_METADATA = {"Software": None}


@dataclass
class Drawn:
    """A drawn figure, what it plots (for report.json and for tests), and what it left unlabelled."""

    figure: Figure
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def png(self) -> bytes:
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata=PNG_METADATA)
        return buffer.getvalue()

    def svg(self) -> bytes:
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="svg", bbox_inches="tight", metadata=SVG_METADATA)
        return buffer.getvalue()


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def plain_legend(owner: Axes | Figure, **kwargs: Any) -> None:
    """``owner.legend(**kwargs)``, its entries shown as written (see PLAIN)."""
    for text in owner.legend(**kwargs).get_texts():
        text.set_parse_math(False)


def run_color(index: int) -> str:
    return RUN_COLORS[index % len(RUN_COLORS)]


@dataclass(frozen=True)
class ScatterPoint:
    label: str
    clean: float  # percent
    robust: float  # percent
    color: str
    clean_sd: float | None = None  # percent: a mean over seeds, with its standard deviation over seeds
    robust_sd: float | None = None
    doubt: str = ""  # the marks of the sanity checks that doubt the robust number ("" when none)
    strong: float | None = None  # percent: the stronger attack's number, when the strength check measured one
    strong_name: str = ""  # e.g. "PGD-100×5"


def tradeoff_scatter(points: list[ScatterPoint], *, x_label: str, y_label: str, title: str,
                     paper: list[ScatterPoint] = (), paper_legend: str = "",
                     faint: list[ScatterPoint] = ()) -> Drawn:
    """``faint``: each seed's own point, drawn lightly behind the means (``points`` with their sd)."""
    figure = new_figure(7.0, 5.0)
    ax = figure.add_axes((0.11, 0.12, 0.86, 0.80))  # the legend goes below, outside the axes
    xs = [p.clean for p in [*points, *paper, *faint]]
    ys = [p.robust for p in [*points, *paper, *faint]] + [p.strong for p in points if p.strong is not None]
    ax.set_xlim(*_padded_limits(xs, 0.28))
    ax.set_ylim(*_padded_limits(ys, 0.22))
    handles = []
    for point in paper:
        ax.scatter([point.clean], [point.robust], marker="D", s=30, facecolors="none", edgecolors=PAPER_COLOR,
                   linewidths=1.0, zorder=2)
    if paper:
        handles.append(Line2D([], [], marker="D", linestyle="none", markerfacecolor="none",
                              markeredgecolor=PAPER_COLOR, label=paper_legend))
    for point in faint:
        ax.scatter([point.clean], [point.robust], s=22, color=point.color, alpha=0.35, linewidths=0, zorder=2)
    for point in points:
        if point.clean_sd is not None or point.robust_sd is not None:
            ax.errorbar([point.clean], [point.robust], xerr=point.clean_sd, yerr=point.robust_sd, fmt="none",
                        ecolor=point.color, elinewidth=1.2, capsize=3, zorder=2.5)
        ax.scatter([point.clean], [point.robust], s=46, color=point.color, edgecolors="black", linewidths=0.5,
                   zorder=3)
        handles.append(Line2D([], [], marker="o", linestyle="none", markerfacecolor=point.color,
                              markeredgecolor="black", label=point.label))
    whiskers = _draw_doubts(ax, points, handles)
    ax.set_xlabel(x_label, **PLAIN)
    ax.set_ylabel(y_label, **PLAIN)
    ax.set_title(title, fontsize=10, **PLAIN)
    ax.grid(True, linewidth=0.4, alpha=0.5)
    if faint:
        handles.append(Line2D([], [], marker="o", linestyle="none", color="#888888", alpha=0.35,
                              label="one seed (faint); mean ± sd over seeds (bars)"))
    # Runs first (they are what the report is about), then the notes at the whiskers' ends, then the paper's
    # points in the space left.
    placed = place_labels(ax, [(p.clean, p.robust) for p in points], [p.label for p in points], fontsize=8.5,
                          colors=[p.color for p in points],
                          avoid=[(p.clean, p.robust) for p in [*paper, *faint]]
                          + [(p.clean, p.strong) for p in whiskers])
    whisker_placed = place_labels(ax, [(p.clean, p.strong) for p in whiskers],
                                  [f"{p.strong_name}: {p.strong:.2f}%" for p in whiskers], fontsize=7.5,
                                  colors=[DOUBT_COLOR] * len(whiskers),
                                  avoid=[(p.clean, p.robust) for p in [*points, *paper, *faint]],
                                  keep_clear=placed) if whiskers else []
    placed_so_far = [*placed, *whisker_placed]
    paper_placed = place_labels(ax, [(p.clean, p.robust) for p in paper], [p.label for p in paper], fontsize=6.5,
                                colors=[PAPER_COLOR] * len(paper),
                                avoid=[(p.clean, p.robust) for p in points], keep_clear=placed_so_far) if paper else []
    plain_legend(ax, handles=handles, loc="upper center", ncol=min(3, len(handles)), fontsize=8, frameon=False,
                 bbox_to_anchor=(0.5, -0.11))
    notes = [f"run {label.text!r} has no free place for its label (see the legend)"
             for label in placed if label.annotation is None]
    notes += [f"the stronger attack's number {label.text!r} has no free place for its label (see the table)"
              for label in whisker_placed if label.annotation is None]
    unlabelled = [label.text for label in paper_placed if label.annotation is None]
    if unlabelled:
        notes.append(f"{len(unlabelled)} of the paper's points are unlabelled for lack of room: "
                     + "; ".join(unlabelled))
    data = {"runs": [{"label": p.label, "clean": p.clean, "robust": p.robust}
                     | ({"clean_sd": p.clean_sd, "robust_sd": p.robust_sd} if faint else {})
                     | ({"doubt": p.doubt, "strong": p.strong, "strong_name": p.strong_name} if p.doubt else {})
                     for p in points],
            "paper": [{"label": p.label, "clean": p.clean, "robust": p.robust} for p in paper],
            "x_label": x_label, "y_label": y_label}
    if faint:
        data["seeds"] = [{"label": p.label, "clean": p.clean, "robust": p.robust} for p in faint]
    return Drawn(figure, data, notes)


def _draw_doubts(ax: Axes, points: list[ScatterPoint], handles: list[Line2D]) -> list[ScatterPoint]:
    """A red ring around each point whose robust number a sanity check doubts, and a dashed whisker from it to
    the stronger attack's number where one was measured; returns the points with whiskers."""
    doubted = [point for point in points if point.doubt]
    for point in doubted:
        ax.scatter([point.clean], [point.robust], s=170, facecolors="none", edgecolors=DOUBT_COLOR, linewidths=1.6,
                   zorder=4)
    whiskers = [point for point in doubted if point.strong is not None]
    for point in whiskers:
        ax.plot([point.clean, point.clean], [point.robust, point.strong], linestyle="--", linewidth=1.3,
                color=DOUBT_COLOR, zorder=2)
        ax.plot([point.clean], [point.strong], marker="_", markersize=14, markeredgewidth=2.0, color=DOUBT_COLOR,
                linestyle="none", zorder=3)
    if doubted:
        handles.append(Line2D([], [], marker="o", markersize=10, linestyle="none", markerfacecolor="none",
                              markeredgecolor=DOUBT_COLOR, markeredgewidth=1.6,
                              label="⚠ doubted by a sanity check (see the table)"))
    if whiskers:
        names = sorted({point.strong_name for point in whiskers})
        handles.append(Line2D([], [], marker="_", markersize=10, markeredgewidth=2.0, linestyle="--",
                              color=DOUBT_COLOR, label=f"down to the stronger attack: {', '.join(names)} "
                                                       "(check subset)"))
    return whiskers


def _padded_limits(values: list[float], fraction: float, *, minimum_span: float = 10.0,
                   bounds: tuple[float, float] = (-1.5, 101.5)) -> tuple[float, float]:
    """Axis limits around ``values`` with room for labels: at least ``minimum_span`` wide, padded by
    ``fraction`` of the span on each side, shifted (not cut) to stay within ``bounds`` (percent axes)."""
    low, high = min(values), max(values)
    if high - low < minimum_span:
        middle = (low + high) / 2
        low, high = middle - minimum_span / 2, middle + minimum_span / 2
    pad = fraction * (high - low)
    low, high = low - pad, high + pad
    if low < bounds[0]:
        low, high = bounds[0], high + bounds[0] - low
    if high > bounds[1]:
        low, high = max(bounds[0], low - (high - bounds[1])), bounds[1]
    return low, high


def training_curves(label: str, epochs: list[dict[str, Any]], *, robust_name: str, color: str) -> Drawn:
    """Each loss term (mean over the epoch's batches) per epoch and, when the run held images out, the
    held-out clean and robust accuracy per epoch beside it."""
    numbers = [record["epoch"] for record in epochs]
    terms: dict[str, list[float]] = {}
    for record in epochs:
        for name in record.get("train") or {}:
            terms.setdefault(name, [])
    for name in terms:
        terms[name] = [_finite((record.get("train") or {}).get(name)) for record in epochs]
    clean = [_percent((record.get("val") or {}).get("clean_acc")) for record in epochs]
    robust = [_percent((record.get("val") or {}).get("robust_acc")) for record in epochs]
    has_val = any(not math.isnan(value) for value in clean)
    if has_val:
        figure = new_figure(9.0, 3.6)
        loss_ax = figure.add_axes((0.08, 0.16, 0.38, 0.70))
        acc_ax = figure.add_axes((0.59, 0.16, 0.38, 0.70))
    else:
        figure = new_figure(5.0, 3.6)
        loss_ax = figure.add_axes((0.15, 0.16, 0.80, 0.70))
    styles = ("--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)))
    # The total first (solid, black), then each term in its own colour and dash.
    total = terms.get("loss")
    # A term that is the whole loss (PGD-AT's ce_adv) is the total's line, named in its legend entry.
    same = [name for name, values in terms.items() if name != "loss" and values == total]
    parts = [(name, values) for name, values in terms.items() if name != "loss" and name not in same]
    for index, (name, values) in enumerate(parts):
        loss_ax.plot(numbers, values, linestyle=styles[index % len(styles)], marker="o", markersize=3, linewidth=1.3,
                     label=name, color=run_color(index + 4))
    if total is not None:
        loss_ax.plot(numbers, total, "-", marker="o", markersize=3.5, linewidth=2.2, color="black",
                     label="total loss" + "".join(f" = {name}" for name in same), zorder=3)
    values = [value for series in terms.values() for value in series if math.isfinite(value)]
    # Terms of very different sizes (a KL of 1e-3 beside a CE of 2) are all readable on a log scale.
    if values and min(values) > 0 and max(values) / min(values) > 100:
        loss_ax.set_yscale("log")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss (epoch mean)" + (", log scale" if loss_ax.get_yscale() == "log" else ""))
    loss_ax.set_title(f"{label}: loss terms", fontsize=10, **PLAIN)
    plain_legend(loss_ax, fontsize=7, frameon=False)
    axes = [loss_ax]
    if has_val:
        acc_ax.plot(numbers, clean, "-", marker="o", markersize=3, color=color, label="held-out clean")
        acc_ax.plot(numbers, robust, "--", marker="s", markersize=3, color=color, label=f"held-out {robust_name}")
        acc_ax.set_ylim(0, 100)
        plain_legend(acc_ax, fontsize=7, frameon=False)
        acc_ax.set_xlabel("epoch")
        acc_ax.set_ylabel("held-out accuracy (%)")
        acc_ax.set_title(f"{label}: held-out accuracy", fontsize=10, **PLAIN)
        axes.append(acc_ax)
    for ax in axes:
        ax.grid(True, linewidth=0.4, alpha=0.5)
        ax.set_xlim(min(numbers) - 0.5, max(numbers) + 0.5)
        ax.xaxis.get_major_locator().set_params(integer=True)
    data = {"epochs": numbers, "terms": terms, "held_out_clean": clean if has_val else [],
            "held_out_robust": robust if has_val else [], "loss_scale": loss_ax.get_yscale()}
    return Drawn(figure, data)


def _finite(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else math.nan


def _percent(value: Any) -> float:
    return 100 * _finite(value)


@dataclass(frozen=True)
class TransferBar:
    label: str
    clean: float
    white_box: float
    white_box_name: str
    black_box: float
    black_box_name: str


def transfer_bars(bars: list[TransferBar], *, title: str) -> Drawn:
    """Clean, white-box and black-box (transfer) accuracy per run, side by side (LBGAT Fig. 5)."""
    figure = new_figure(max(5.5, 1.7 * len(bars) + 2.5), 4.0)
    ax = figure.add_axes((0.1, 0.12, 0.86, 0.78))
    positions = np.arange(len(bars))
    width = 0.26
    series = (("clean", [bar.clean for bar in bars], "#bbbbbb"),
              ("white-box: " + ", ".join(sorted({bar.white_box_name for bar in bars})),
               [bar.white_box for bar in bars], "#d62728"),
              ("black-box: " + ", ".join(sorted({bar.black_box_name for bar in bars})),
               [bar.black_box for bar in bars], "#1f77b4"))
    for offset, (name, values, color) in zip((-width, 0.0, width), series, strict=True):
        drawn = ax.bar(positions + offset, values, width, label=name, color=color, edgecolor="black", linewidth=0.4)
        ax.bar_label(drawn, labels=[f"{value:.1f}" for value in values], fontsize=7, padding=2)
    crowded = sum(len(bar.label) for bar in bars) * 6.5 > 0.8 * figure.get_figwidth() * 72  # 8 pt text
    ax.set_xticks(positions, [bar.label for bar in bars], fontsize=8, rotation=20 if crowded else 0,
                  ha="right" if crowded else "center", **PLAIN)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 109)
    ax.set_title(title, fontsize=10, **PLAIN)
    ax.grid(True, axis="y", linewidth=0.4, alpha=0.5)
    plain_legend(ax, loc="upper center", ncol=3, fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.09))
    data = {"runs": [bar.__dict__ for bar in bars]}
    return Drawn(figure, data)


def embedding_plot(label: str, coordinates: np.ndarray, labels: np.ndarray, adversarial: np.ndarray,
                   class_names: list[str], *, attack_name: str) -> Drawn:
    """Clean (left) and adversarial (right) logits in one shared t-SNE embedding, coloured by true class."""
    figure = new_figure(9.0, 4.6)
    axes = (figure.add_axes((0.07, 0.19, 0.41, 0.72)), figure.add_axes((0.57, 0.19, 0.41, 0.72)))
    colors = [run_color(index) for index in range(len(class_names))]
    unbounded = (-math.inf, math.inf)
    x_limits = _padded_limits(list(coordinates[:, 0]), 0.05, minimum_span=1.0, bounds=unbounded)
    y_limits = _padded_limits(list(coordinates[:, 1]), 0.05, minimum_span=1.0, bounds=unbounded)
    for ax, is_adversarial, title in zip(axes, (False, True), ("clean inputs", f"{attack_name} inputs"),
                                         strict=True):
        chosen = adversarial == is_adversarial
        for index, _name in enumerate(class_names):
            mask = chosen & (labels == index)
            ax.scatter(coordinates[mask, 0], coordinates[mask, 1], s=8, color=colors[index],
                       marker="x" if is_adversarial else "o", linewidths=0.8, alpha=0.85)
        ax.set_title(f"{label}: logits of {title}", fontsize=10, **PLAIN)
        ax.set_xlabel("t-SNE dimension 1 (arbitrary units)")
        ax.set_ylabel("t-SNE dimension 2 (arbitrary units)")
        ax.set_xlim(min(x_limits), max(x_limits))
        ax.set_ylim(min(y_limits), max(y_limits))
    handles = [Line2D([], [], marker="o", linestyle="none", color=colors[index], label=f"class {name}")
               for index, name in enumerate(class_names)]
    handles += [Line2D([], [], marker="o", linestyle="none", color="black", label="clean"),
                Line2D([], [], marker="x", linestyle="none", color="black", label="adversarial")]
    plain_legend(figure, handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=7.5,
                 frameon=False, bbox_to_anchor=(0.5, 0.0))
    data = {"points": int(len(labels)), "classes": class_names}
    return Drawn(figure, data)
