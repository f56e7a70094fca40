"""``lbgat export``: a trained checkpoint as a folder other code loads: safetensors weights in the official
key layout, a model card, the run's config."""

from .writer import ExportResult, export_checkpoint

__all__ = ["ExportResult", "export_checkpoint"]
