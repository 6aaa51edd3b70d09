"""The examples of ``README.md`` and ``docs/``: found in the Markdown and run as a reader would.

A fenced block whose language is ``sh``, ``bash`` or ``shell`` runs in bash, one whose language is
``python`` runs in the project's interpreter; blocks of other languages (``json``, ``text``,
``hcl``, ``sql``, …) are shown, not run, unless a directive writes them to a file. The blocks of a
page run in the order they appear, in one working directory, against one Keel of the page's own
started by ``make serve`` (the README's quick start), so a page may build on its earlier blocks.

What a block sees:

- ``KEEL_URL`` (the live server) and ``KEEL_TOKEN`` (the admin API key ``make serve`` printed);
  ``http://127.0.0.1:8000`` in a block is the live server's address;
- ``keel`` and ``python`` from the project's virtualenv, also as ``.venv/bin/…``;
- in bash: ``set -euo pipefail``, ``curl`` failing on an HTTP error status (``--fail-with-body``),
  and every variable an earlier block of the page exported.

A directive is an HTML comment on the line right before the fence, invisible on a rendered page::

    <!-- doc-test: exit=2 -->              the block must end with exit code 2
    <!-- doc-test: file=app.json -->       write the block to that file instead of running it
    <!-- doc-test: background -->          start it and leave it running until the page ends
    <!-- doc-test: skip="why not here" --> not run; the reason is required
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]

#: Fence languages that are run, by the program that runs them.
RUNNERS = {"sh": "bash", "bash": "bash", "shell": "bash", "python": "python", "py": "python"}

#: The address the docs use for a local Keel: ``make serve``'s default.
DOCUMENTED_ADDRESS = "127.0.0.1:8000"

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*doc-test:(?P<body>.*?)-->\s*$")
_KNOWN_OPTIONS = {"exit", "file", "background", "skip"}


class DirectiveError(ValueError):
    """A ``doc-test`` directive the runner does not understand."""


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page, with its directive."""

    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{shown(self.page)}:{self.line}"

    @property
    def runner(self) -> str | None:
        """``bash`` or ``python`` for a block that runs; ``None`` for one that is only shown."""
        if "file" in self.options or "skip" in self.options:
            return None
        return RUNNERS.get(self.language)

    @property
    def expected_exit(self) -> int:
        return int(self.options.get("exit", "0"))

    @property
    def is_background(self) -> bool:
        return "background" in self.options


def shown(page: Path) -> Path:
    """``page`` as a reader names it: relative to the repository where it lies inside."""
    return page.relative_to(REPOSITORY) if page.is_relative_to(REPOSITORY) else page


def documented_pages() -> list[Path]:
    """``README.md`` and every page under ``docs/``."""
    return [REPOSITORY / "README.md", *sorted((REPOSITORY / "docs").rglob("*.md"))]


def parse_directive(text: str, where: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for token in shlex.split(text):
        name, _, value = token.partition("=")
        if name not in _KNOWN_OPTIONS:
            raise DirectiveError(f"{where}: unknown doc-test option {name!r}")
        options[name] = value
    if "skip" in options and not options["skip"].strip():
        raise DirectiveError(f'{where}: a skipped example must say why (skip="…")')
    if "exit" in options and not options["exit"].isdigit():
        raise DirectiveError(f"{where}: exit= takes a number")
    return options


def blocks_of(page: Path) -> list[Block]:
    """The fenced code blocks of ``page`` in order, each with the directive right before it."""
    lines = page.read_text().splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence = opening["fence"]
        language = opening["info"].strip().split(" ")[0].lower()
        start = index
        body: list[str] = []
        index += 1
        while index < len(lines) and not lines[index].strip().startswith(fence):
            body.append(lines[index][len(opening["indent"]) :])
            index += 1
        index += 1  # the closing fence
        options: dict[str, str] = {}
        previous = lines[start - 1] if start > 0 else ""
        directive = _DIRECTIVE.match(previous)
        where = f"{shown(page)}:{start + 1}"
        if directive:
            options = parse_directive(directive["body"], where)
        elif "doc-test" in previous:
            raise DirectiveError(f"{where}: malformed doc-test directive {previous.strip()!r}")
        blocks.append(Block(page, start + 1, language, "\n".join(body) + "\n", options))
    return blocks


def localised(code: str, address: str) -> str:
    """``code`` with the documented ``127.0.0.1:8000`` (or ``localhost:8000``) pointing at
    ``address``, the page's live server."""
    return code.replace(DOCUMENTED_ADDRESS, address).replace("localhost:8000", address)
