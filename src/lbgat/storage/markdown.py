"""Text from users and files as literal Markdown: every Markdown page lbgat writes (a report's report.md, an
evaluation's report.md, an export's model card, the demo's summary.md) puts such text through these helpers,
so a folder name, a title, a setting or a library's message shows as written and never adds a heading, a
table column, a link, an image or raw HTML (Markdown renderers pass HTML through to the page).

What is escaped follows CommonMark and GitHub's tables. Characters that are syntax wherever they stand are
always escaped. ``<``, ``&`` and brackets are syntax only in some company, and lbgat's own sentences use them
as plain text ("[94.3, 96.8]", "p < 0.001", "natural [seed0]"): they are escaped where they could start a
tag, an autolink, an entity or a link, and left readable elsewhere.
"""

from __future__ import annotations

import re

# Emphasis, code, tables, headings, strikethrough, blockquotes, and the escape character itself.
ALWAYS = str.maketrans({char: "\\" + char for char in "\\`*_|#~>"})
# A tag, comment, processing instruction or autolink starts with "<" and a letter, "/", "!" or "?"; an
# entity with "&" and a letter, digit or "#". At the end of the text the next value could supply the rest.
TAG_START = re.compile(r"<(?=[A-Za-z/!?]|$)")
ENTITY_START = re.compile(r"&(?=[A-Za-z0-9#]|$)")
# "](" makes an inline link or image, "][" a reference link, "]:" a link definition.
LINK = re.compile(r"\][(\[:]")
# Where the text begins a line (text written after "- " in a list is such a place): a list item, thematic
# break or setext underline, or "[" of a link definition or task box. The match ends where a backslash
# keeps it text; elsewhere in a line that backslash renders as nothing.
BLOCK_START = re.compile(r" ?(?:\d{1,9}(?=[.)](?: |$))|(?=[-+=](?: |$|[-+=])|\[))")
BACKTICKS = re.compile(r"`+")
WHITESPACE = re.compile(r"\s+")


class Markdown(str):
    """Text already written as Markdown (escaped, or lbgat's own syntax), so it is not escaped twice."""


def one_line(value: object) -> str:
    """Every run of whitespace, line breaks included, as one space: a line break would end a table row, a
    heading or a list item and start a block of the text's choosing."""
    return WHITESPACE.sub(" ", str(value))


def text(value: object, *, brackets: bool = False) -> Markdown:
    """``value`` as literal Markdown text on one line. ``brackets``: escape every bracket (for the text of a
    link or an image, where an unmatched one would end it)."""
    line = ENTITY_START.sub(r"\\&", TAG_START.sub(r"\\<", one_line(value).translate(ALWAYS)))
    if brackets or LINK.search(line):
        line = line.replace("[", "\\[").replace("]", "\\]")
    start = BLOCK_START.match(line)
    if start:
        line = line[: start.end()] + "\\" + line[start.end():]
    return Markdown(line)


def code(value: object, *, in_table: bool = False) -> Markdown:
    """``value`` as an inline code span (shown literally, nothing in it read as Markdown or HTML), on one line.

    The fence is one backtick longer than any run of backticks inside, so none of them can close it. In a
    table's cell a pipe still splits the row inside a code span (GitHub's tables), so there it is escaped.
    """
    line = one_line(value).strip()
    if in_table:
        line = line.replace("|", "\\|")
    if not line:
        return Markdown("")
    fence = "`" * (max((len(run) for run in BACKTICKS.findall(line)), default=0) + 1)
    pad = " " if line.startswith("`") or line.endswith("`") else ""
    return Markdown(f"{fence}{pad}{line}{pad}{fence}")


def join(*parts: object) -> Markdown:
    """One piece of Markdown from lbgat's own pieces (:class:`Markdown`, kept) and anything else (escaped)."""
    return Markdown("".join(part if isinstance(part, Markdown) else text(part) for part in parts))


def fenced(block: str, language: str = "") -> Markdown:
    """``block`` (several lines, shown as they are) as a fenced code block that nothing inside can close: the
    fence is longer than any run of backticks in it (a line of them would end a shorter one)."""
    longest = max((len(run) for run in BACKTICKS.findall(block)), default=0)
    fence = "`" * max(3, longest + 1)
    return Markdown(f"{fence}{language}\n{block}\n{fence}")


def finalize(value: object) -> str:
    """For Jinja2's ``finalize``: every ``{{ ... }}`` of a Markdown template is literal text unless it is
    already :class:`Markdown` (the Markdown twin of HTML autoescaping)."""
    return value if isinstance(value, Markdown) else text(value)
