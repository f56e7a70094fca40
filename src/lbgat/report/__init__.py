"""Reports people look at: the table of runs and the figures (trade-off scatter, training curves, logit
embedding, white-box vs black-box bars) as report.md, a self-contained report.html and PNG/SVG files."""

from .build import ReportOptions, ReportResult, build_report
from .collect import Run, collect
from .embedding import EmbeddingSettings

__all__ = ["EmbeddingSettings", "ReportOptions", "ReportResult", "Run", "build_report", "collect"]
