"""Point labels that do not overlap: each label tries positions around its point (near ones first) and takes
the first whose box, as the renderer draws it, touches no other label, no marker and stays inside the axes.

A label with no free position is left off (and said so by the caller) rather than drawn over another.
"""

from __future__ import annotations

from dataclasses import dataclass

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Annotation, Text
from matplotlib.transforms import Bbox

# Offsets in points, and the text alignment that keeps the label on that side of its point.
DIRECTIONS = ((1, 0.6, "left", "bottom"), (1, -0.6, "left", "top"), (-1, 0.6, "right", "bottom"),
              (-1, -0.6, "right", "top"), (0, 1, "center", "bottom"), (0, -1, "center", "top"),
              (1, 0, "left", "center"), (-1, 0, "right", "center"))
DISTANCES = (6.0, 14.0, 26.0, 40.0)
MARKER_HALF_SIZE = 5.0  # points: the box kept free around every marker
PADDING = 1.5  # pixels kept between two labels


@dataclass(frozen=True)
class PlacedLabel:
    text: str
    annotation: Annotation | None  # None: no free position


def place_labels(ax: Axes, points: list[tuple[float, float]], texts: list[str], *, fontsize: float = 8.0,
                 colors: list[str] | None = None, avoid: list[tuple[float, float]] = (),
                 keep_clear: list[PlacedLabel] = ()) -> list[PlacedLabel]:
    """Label ``points`` (data coordinates) with ``texts``; ``avoid``: more markers to keep clear of;
    ``keep_clear``: labels placed earlier (by another call) that these must not touch."""
    figure = ax.figure
    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
    renderer = canvas.get_renderer()
    scale = figure.dpi / 72.0
    axes_box = ax.get_window_extent(renderer)
    half = MARKER_HALF_SIZE * scale
    centres = [tuple(ax.transData.transform(point)) for point in [*points, *avoid]]
    markers = [Bbox.from_extents(x - half, y - half, x + half, y + half) for x, y in centres]
    taken: list[Bbox] = [text_box(label.annotation, renderer).padded(PADDING) for label in keep_clear
                         if label.annotation is not None]
    placed: list[PlacedLabel] = []
    for index, (point, text) in enumerate(zip(points, texts, strict=True)):
        own = centres[index]
        # A label sits nearer its own point than any other point it labels (points at the same place
        # excepted); where none can, a leader line from farther away shows whose label it is.
        others = [centre for centre in centres[: len(points)]
                  if abs(centre[0] - own[0]) + abs(centre[1] - own[1]) > 1.0]
        color = colors[index] if colors else "black"
        annotation = _first_free_position(ax, renderer, point, text, fontsize, color, axes_box, markers, taken,
                                          own, others)
        if annotation is None:
            annotation = _first_free_position(ax, renderer, point, text, fontsize, color, axes_box, markers, taken,
                                              own, [], distances=DISTANCES[1:])
        if annotation is not None:
            taken.append(text_box(annotation, renderer).padded(PADDING))
        placed.append(PlacedLabel(text, annotation))
    return placed


def _distance(box: Bbox, centre: tuple[float, float]) -> float:
    dx = max(box.x0 - centre[0], 0.0, centre[0] - box.x1)
    dy = max(box.y0 - centre[1], 0.0, centre[1] - box.y1)
    return (dx * dx + dy * dy) ** 0.5


def _first_free_position(ax: Axes, renderer, point: tuple[float, float], text: str, fontsize: float, color: str,
                         axes_box: Bbox, markers: list[Bbox], taken: list[Bbox], own: tuple[float, float],
                         others: list[tuple[float, float]], distances: tuple[float, ...] = DISTANCES
                         ) -> Annotation | None:
    for distance in distances:
        for dx, dy, horizontal, vertical in DIRECTIONS:
            arrow = {"arrowstyle": "-", "color": color, "lw": 0.6, "shrinkA": 0, "shrinkB": 3} \
                if distance > DISTANCES[0] else None
            annotation = ax.annotate(text, point, xytext=(dx * distance, dy * distance), textcoords="offset points",
                                     ha=horizontal, va=vertical, fontsize=fontsize, color=color,
                                     arrowprops=arrow, annotation_clip=False, parse_math=False)
            box = text_box(annotation, renderer)
            inside = (box.x0 >= axes_box.x0 and box.x1 <= axes_box.x1 and box.y0 >= axes_box.y0
                      and box.y1 <= axes_box.y1)
            nearest_is_own = all(_distance(box, own) < _distance(box, centre) for centre in others)
            if inside and nearest_is_own and not any(box.overlaps(other) for other in [*markers, *taken]):
                return annotation
            annotation.remove()
    return None


def text_box(annotation: Annotation, renderer) -> Bbox:
    """The box of the label's text alone (an Annotation's own extent includes its leader line)."""
    annotation.update_positions(renderer)
    return Text.get_window_extent(annotation, renderer)
