"""Checks that a page lbgat wrote shows hostile text as text, shared by the escaping tests.

``assert_literal_markdown`` reads Markdown the way CommonMark and GitHub's tables do, as far as structure
goes: outside code (fenced blocks, inline code spans) no unescaped "<" may start a tag or an autolink, no "&"
an entity, no "](" a link but lbgat's own to its figure files and config, no line may begin a heading or a
block that the template did not write, and every row of a table has its header's columns.
``assert_literal_html`` parses the page and allows only the template's own elements and attributes.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

# Each tries to run script, add an element or attribute, start a heading, split a table, open or close code,
# make a link, define a link target or start a comment; one includes a line break.
HOSTILE = ("<script>document.title='PWNED';alert(1)</script>", 'x"><img src=x onerror=alert(2)>',
           "<svg onload=alert(3)>", "a|b", "``` `tick` *em* _em_", "[link](javascript:alert(4))",
           "](javascript:alert(5))", "&lt;i&gt; &#60;b&#62;", "<!-- c", "\n# injected", "\n- injected", "\n[d]: /x")
# In a folder name "/" cannot stand: the same without it.
HOSTILE_NAME = ('x"><img src=x onerror=alert(2)>', "<svg onload=alert(3)>", "a|b", "``` `tick`",
                "[link](javascript:alert(4))", "$\\frac$", "\n# injected")

OWN_LINK = re.compile(r"\]\((figures/[a-z0-9.-]+\.(png|svg)|config\.yaml)\)")
DANGER = re.compile(r"<(?=[A-Za-z/!?])|&(?=[A-Za-z0-9#])|\]\(")


def hostile(tag: str) -> str:
    """A hostile text naming the field it was put in (``tag``), so a failure says which field leaked."""
    return f"{tag} " + " ".join(HOSTILE)


def hostile_name(tag: str) -> str:
    return f"{tag} " + " ".join(HOSTILE_NAME)


def _escaped(line: str, index: int) -> bool:
    backslashes = len(line[:index]) - len(line[:index].rstrip("\\"))
    return backslashes % 2 == 1


def _without_code_spans(line: str) -> str:
    """``line`` with its inline code spans blanked: a run of n backticks up to the next run of exactly n."""
    out, index = [], 0
    while index < len(line):
        if line[index] == "`" and not _escaped(line, index):
            run = re.match(r"`+", line[index:]).group()
            close = re.compile(rf"(?<!`){run}(?!`)").search(line, index + len(run))
            if close:
                out.append(" " * (close.end() - index))
                index = close.end()
                continue
            out.append(run)
            index += len(run)
            continue
        out.append(line[index])
        index += 1
    return "".join(out)


def _columns(line: str) -> int:
    return sum(1 for index, char in enumerate(line) if char == "|" and not _escaped(line, index))


def assert_literal_markdown(markdown: str, tags: list[str]) -> None:
    """``markdown`` holds each of ``tags`` (the hostile text is shown, not dropped) and nothing of it as
    Markdown: see the module's docstring."""
    for tag in tags:
        assert tag in markdown or tag.replace("_", "\\_") in markdown, f"{tag}'s text is missing"
    fence: str | None = None
    table: int | None = None
    for number, line in enumerate(markdown.split("\n"), 1):
        where = f"line {number}: {line!r}"
        if fence is not None:  # inside a fenced block only its own closing fence counts
            if re.fullmatch(rf"{fence}`*\s*", line):
                fence = None
            continue
        opening = re.match(r"`{3,}", line)
        if opening:
            fence = opening.group()
            continue
        rest = _without_code_spans(line)
        for found in DANGER.finditer(rest):
            if not _escaped(rest, found.start()):
                assert found.group() == "](" and OWN_LINK.match(rest, found.start()), where
        block = rest.lstrip(" ")
        assert not block.startswith(("<", ">", "[", "=", "+ ", "* ", "~~~")), where
        assert not re.match(r"\d+[.)] ", block), where
        assert not re.match(r"(#+|-) injected", block), where  # a line break of the text began a block
        if block.startswith("- "):
            assert not re.match(r"- (#|- |\d+[.)] |\[|<|>|```)", block), where
        if line.startswith("|"):
            table = table if table is not None else _columns(line)
            assert _columns(line) == table, where
        else:
            table = None
    assert fence is None, "a code fence was left open"


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.comments: list[str] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data

    def handle_comment(self, data: str) -> None:
        self.comments.append(data)


REPORT_ELEMENTS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "code", "div", "table",
                   "thead", "tbody", "tr", "th", "td", "span", "ul", "li", "b", "figure", "img", "figcaption", "a"}
REPORT_ATTRIBUTES = {"lang", "charset", "name", "content", "class", "title", "id", "src", "alt", "style", "href"}


def assert_literal_html(html: str, tags: list[str], title: str) -> None:
    """``html`` is the report template's own elements and attributes only, its figures embedded PNGs and its
    links lbgat's figure files, with every hostile text shown as text."""
    page = _Page()
    page.feed(html)
    page.close()
    for tag, attributes in page.tags:
        assert tag in REPORT_ELEMENTS, (tag, attributes)
        assert set(attributes) <= REPORT_ATTRIBUTES, (tag, attributes)
        if tag == "img":
            assert str(attributes["src"]).startswith("data:image/png;base64,"), attributes["alt"]
        if tag == "a":
            assert re.fullmatch(r"figures/[a-z0-9.-]+\.(png|svg)", str(attributes["href"])), attributes["href"]
    assert page.comments == []
    assert " ".join(page.title.split()) == " ".join(title.split())
    for tag in tags:
        assert tag in html, f"{tag}'s text is missing"
    assert "onerror=alert(2)" in html and "<img src=x" not in html and "<script>document" not in html
