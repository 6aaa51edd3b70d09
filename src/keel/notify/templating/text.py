"""A plain-text rendering of an email's HTML, for the text part a template did not write.

The standard library's tolerant parser, not a dependency: paragraphs and lines stay apart,
list items get a dash, links show their target, scripts and styles disappear.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

_SKIPPED = {"script", "style", "head", "title", "template"}
_PARAGRAPHS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "blockquote", "ul", "ol"}
_LINES = {"div", "tr", "section", "article", "header", "footer", "center", "dl", "dt", "dd"}


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skipping = 0
        self.preformatted = 0
        self.links: list[tuple[str | None, int]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self.skipping += 1
        elif tag in _PARAGRAPHS:
            self.out.append("\n\n")
        elif tag in _LINES or tag == "br":
            self.out.append("\n")
        elif tag == "li":
            self.out.append("\n- ")
        elif tag in ("td", "th"):
            self.out.append(" ")
        elif tag == "hr":
            self.out.append("\n\n----\n\n")
        elif tag == "pre":
            self.preformatted += 1
            self.out.append("\n\n")
        elif tag == "a":
            self.links.append((dict(attrs).get("href"), len(self.out)))

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self.skipping = max(self.skipping - 1, 0)
        elif tag in _PARAGRAPHS or tag == "pre":
            self.preformatted = max(self.preformatted - (tag == "pre"), 0)
            self.out.append("\n\n")
        elif tag in _LINES:
            self.out.append("\n")
        elif tag == "a" and self.links:
            href, start = self.links.pop()
            label = "".join(self.out[start:]).strip()
            target = (href or "").strip()
            if target.lower().startswith(("http://", "https://", "mailto:")):
                shown = target[7:] if target.lower().startswith("mailto:") else target
                if shown != label:
                    self.out.append(f" ({shown})" if label else shown)

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        self.out.append(data if self.preformatted else re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    """A readable plain-text rendering of an email's HTML (paragraphs, lists, link targets)."""
    extractor = _TextExtractor()
    extractor.feed(html)
    extractor.close()
    lines = [line.strip() for line in "".join(extractor.out).splitlines()]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
    return text.strip()
