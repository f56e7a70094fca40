"""report.md and report.html from one context, through the Jinja2 templates shipped in ``templates/``.

The HTML is self-contained: every figure is embedded as a PNG data URI and the style sheet is inline,
so the file opens from disk, offline, and can be mailed on its own.
"""

from __future__ import annotations

import base64
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from ..evaluate.report import markdown_text


def _environment(autoescape: bool) -> Environment:
    environment = Environment(loader=PackageLoader("lbgat.report", "templates"), undefined=StrictUndefined,
                              autoescape=select_autoescape(["html", "html.j2"]) if autoescape else False,
                              trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    environment.filters["cell"] = markdown_cell
    environment.filters["data_uri"] = png_data_uri
    environment.filters["md"] = markdown_text
    return environment


def markdown_cell(value: Any) -> str:
    """A value as one Markdown table cell: pipes escaped, line breaks folded."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def render_markdown(context: dict[str, Any]) -> str:
    return _environment(False).get_template("report.md.j2").render(**context)


def render_html(context: dict[str, Any]) -> str:
    return _environment(True).get_template("report.html.j2").render(**context)
