"""Where a field of a TOML document is written: its line, for error messages.

``tomllib`` keeps no positions, so the source is read again line by line: table headers
(``[a.b]``, ``[[routes]]``, each array-of-tables entry counted) and ``key = value`` lines
(dotted and quoted keys included) give a path and its line; the tables a dotted name
defines on the way, at the line they first appear. A field inside an inline table
or a multi-line array is found at the line of the key that holds it (the longest known
prefix of its path).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

Path = tuple[str | int, ...]

_HEADER = re.compile(r"^\s*(\[\[|\[)(?P<key>[^\[\]]+)(\]\]|\])\s*(#.*)?$")
_BARE = re.compile(r"[A-Za-z0-9_-]+")


def split_key(text: str) -> list[str] | None:
    """The parts of a (dotted, maybe quoted) TOML key; None when ``text`` is not a key."""
    parts: list[str] = []
    position, text = 0, text.strip()
    while position < len(text):
        while position < len(text) and text[position] in " \t":
            position += 1
        if position >= len(text):
            return None
        quote = text[position]
        if quote in "\"'":
            end = text.find(quote, position + 1)
            if end < 0:
                return None
            parts.append(text[position + 1 : end])
            position = end + 1
        else:
            match = _BARE.match(text, position)
            if match is None:
                return None
            parts.append(match.group())
            position = match.end()
        while position < len(text) and text[position] in " \t":
            position += 1
        if position < len(text):
            if text[position] != ".":
                return None
            position += 1
    return parts or None


def _key_of_assignment(line: str) -> list[str] | None:
    """The key of ``key = value`` (the first ``=`` outside quotes), or None."""
    quote: str | None = None
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "=":
            return split_key(line[:index])
        elif char in "#[{":
            return None
    return None


def _bracket_depth(text: str) -> int:
    """How many ``[``/``{`` the text leaves open (strings and comments skipped)."""
    depth, quote = 0, None
    for char in text:
        if quote:
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "#":
            break
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
    return depth


def field_lines(source: str) -> dict[Path, int]:
    """Every table and key path of ``source`` and the (1-based) line it is written on."""
    lines: dict[Path, int] = {}
    table: Path = ()
    array_counts: dict[Path, int] = {}
    depth = 0
    in_multiline_string: str | None = None
    for number, line in enumerate(source.splitlines(), start=1):
        if in_multiline_string:
            if line.count(in_multiline_string) % 2 == 1:
                in_multiline_string = None
            continue
        if depth > 0:  # inside a multi-line array or inline table of an earlier key
            depth += _bracket_depth(line)
            continue
        header = _HEADER.match(line)
        if header:
            parts = split_key(header.group("key"))
            if parts is None:
                continue
            path: Path = tuple(parts)
            _note_implicit_tables(lines, path[:-1], number)
            if header.group(1) == "[[":
                index = array_counts.get(path, -1) + 1
                array_counts[path] = index
                lines.setdefault(path, number)
                path = (*path, index)
            table = path
            lines.setdefault(table, number)
            continue
        key = _key_of_assignment(line)
        if key is None:
            continue
        full: Path = (*table, *key)
        _note_implicit_tables(lines, full[:-1], number)
        lines.setdefault(full, number)
        value = line.split("=", 1)[1]
        for marker in ('"""', "'''"):
            if value.count(marker) % 2 == 1:
                in_multiline_string = marker
        if in_multiline_string is None:
            depth = max(_bracket_depth(value), 0)
    return lines


def _note_implicit_tables(lines: dict[Path, int], prefix: Path, number: int) -> None:
    """The tables a dotted header or key defines on the way (``[a.b.c]`` defines ``a`` and
    ``a.b``) are written where they first appear."""
    for length in range(1, len(prefix) + 1):
        lines.setdefault(prefix[:length], number)


def line_of(lines: dict[Path, int], path: Sequence[str | int]) -> int | None:
    """The line of ``path``, or of its longest prefix written in the source."""
    for length in range(len(path), 0, -1):
        found = lines.get(tuple(path[:length]))
        if found is not None:
            return found
    return None
