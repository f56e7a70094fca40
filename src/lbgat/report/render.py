"""report.md and report.html from one context, through the Jinja2 templates shipped in ``templates/``.

The HTML is self-contained: every figure is embedded as a PNG data URI and the style sheet is inline,
so the file opens from disk, offline, and can be mailed on its own.

Both pages escape every value by default, because titles, folder names, settings and evaluation files are
the user's or another person's text: the HTML through Jinja2's autoescaping, the Markdown through
:func:`lbgat.storage.markdown.finalize`. In the Markdown, ``code`` and ``code_cell`` write a value as an inline code
span instead, and ``link_text`` as the text of a link or image.
"""

from __future__ import annotations

import base64
from functools import partial
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from ..storage import markdown


def _environment(html: bool) -> Environment:
    environment = Environment(loader=PackageLoader("lbgat.report", "templates"), undefined=StrictUndefined,
                              autoescape=html, finalize=None if html else markdown.finalize,
                              trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    environment.filters["data_uri"] = png_data_uri
    environment.filters["code"] = markdown.code
    environment.filters["code_cell"] = partial(markdown.code, in_table=True)
    environment.filters["link_text"] = partial(markdown.text, brackets=True)
    return environment


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def render_markdown(context: dict[str, Any]) -> str:
    return _environment(html=False).get_template("report.md.j2").render(**context)


def render_html(context: dict[str, Any]) -> str:
    return _environment(html=True).get_template("report.html.j2").render(**context)
