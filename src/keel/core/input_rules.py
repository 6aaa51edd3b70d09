"""What no request may carry, checked once at the edge of every service.

Text that PostgreSQL cannot store (NUL, U+0000), that no UTF-8 encoder accepts (a lone
surrogate such as ``"\\udfff"``, or the raw bytes ``ED A0 80``) and JSON nested deeper than any
document of Keel's needs would each be refused deep inside a service — as a 500 on one database
and not the other, or, stored on one, as a 500 on every later read. The rules here refuse them
before a handler runs, the same way for every route, with a 400 that names the rule. They are
pure functions over the request's parts, so the middleware (:mod:`keel.core.http`) stays thin.

Limits:

- no NUL in the path, the query or a text body (JSON strings, form fields);
- a text body is UTF-8, and its JSON escapes pair surrogates;
- JSON nests at most :data:`MAX_JSON_DEPTH` arrays and objects deep.

Bodies of other media types (multipart uploads, ``application/octet-stream``) are passed on
untouched: binary content is theirs to carry.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

#: Deepest nesting of arrays and objects a JSON body may have. Keel's own documents (flag
#: rules, config values, audit events) nest a handful of levels; Python's recursion limit
#: (serialising, diffing, validating a value) is reached around 300.
MAX_JSON_DEPTH = 64

#: Largest integer a request may send where Keel stores one (PostgreSQL ``integer``).
MAX_STORED_INT = 2**31 - 1

#: Media types whose bodies are binary and are not checked here.
_BINARY_TYPES = ("multipart/", "application/octet-stream")

# A ``\uXXXX`` escape with the backslashes before it: an odd run means the last one escapes
# the ``u``; an even run is escaped backslashes followed by a plain ``u``.
_UNICODE_ESCAPE = re.compile(rb"(\\+)u([0-9a-fA-F]{4})")
# A JSON string, unrolled so that it runs in linear time.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
_OPENING = frozenset(b"[{")


class InputRefused(ValueError):
    """A part of the request that breaks a rule of this module; the message says which."""


def check_target(path: str, query_string: bytes) -> None:
    """The request target: its decoded path and its percent-encoded query."""
    if "\x00" in path:
        raise InputRefused("The path contains a NUL character (%00).")
    if query_string and b"\x00" in unquote_to_bytes(query_string):
        raise InputRefused("The query string contains a NUL character (%00).")


def checks_body(content_type: str | None) -> bool:
    """Whether a body of ``content_type`` is text the rules apply to."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    return not media_type.startswith(_BINARY_TYPES)


def check_body(body: bytes, content_type: str | None) -> None:
    """A whole text body: UTF-8 without NUL; JSON also without NUL or lone-surrogate escapes
    and not nested too deep; form fields without NUL once decoded. Binary media types pass."""
    if not body or not checks_body(content_type):
        return
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise InputRefused("The request body is not valid UTF-8.") from None
    if b"\x00" in body:
        raise InputRefused("The request body contains a NUL character.")
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type == "application/x-www-form-urlencoded" and not _looks_like_json(body):
        if b"\x00" in unquote_to_bytes(body.replace(b"+", b" ")):
            raise InputRefused("A form field contains a NUL character (%00).")
        return
    if _looks_like_json(body):
        check_json_escapes(body)
        check_json_depth(body)


def check_json_escapes(body: bytes) -> None:
    r"""Refuse ``\u0000`` and a ``\uD800``-``\uDFFF`` escape that is not half of a pair."""
    if b"\\u" not in body:
        return
    low_expected_at = -1
    for escape in _UNICODE_ESCAPE.finditer(body):
        if len(escape[1]) % 2 == 0:
            continue
        code = int(escape[2], 16)
        start = escape.end() - 6
        if code == 0:
            raise InputRefused("A JSON string contains a NUL character (\\u0000).")
        if 0xD800 <= code <= 0xDBFF:
            low_expected_at = escape.end()
            if not _is_low_surrogate_escape(body[escape.end() : escape.end() + 6]):
                raise InputRefused("A JSON string contains a lone surrogate (\\ud800-\\udfff).")
        elif 0xDC00 <= code <= 0xDFFF and start != low_expected_at:
            raise InputRefused("A JSON string contains a lone surrogate (\\ud800-\\udfff).")


def check_json_depth(body: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON whose arrays and objects nest deeper than ``limit``."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return  # cannot nest deeper than it has brackets
    depth = 0
    for byte in _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS):
        if byte in _OPENING:
            depth += 1
            if depth > limit:
                raise InputRefused(f"The JSON body nests deeper than {limit} levels.")
        else:
            depth -= 1


def check_json_value(value: object, limit: int = MAX_JSON_DEPTH) -> None:
    """The same rules on a parsed value that did not come through the edge (a CLI argument, a
    file): no NUL or lone surrogate in a string or key, at most ``limit`` levels deep. Walked
    without recursion, so no value is too deep to be refused."""
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        current, depth = pending.pop()
        if isinstance(current, str):
            _check_text(current)
        elif isinstance(current, dict | list):
            if depth > limit:
                raise InputRefused(f"The value nests deeper than {limit} levels.")
            if isinstance(current, dict):
                pending.extend((key, depth) for key in current)
                pending.extend((child, depth + 1) for child in current.values())
            else:
                pending.extend((child, depth + 1) for child in current)


def _check_text(text: str) -> None:
    if "\x00" in text:
        raise InputRefused("A string contains a NUL character.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputRefused("A string contains a lone surrogate (not UTF-8).") from None


def _is_low_surrogate_escape(text: bytes) -> bool:
    if len(text) != 6 or text[:2] != b"\\u":
        return False
    try:
        return 0xDC00 <= int(text[2:], 16) <= 0xDFFF
    except ValueError:
        return False


def _looks_like_json(body: bytes) -> bool:
    """Vault's clients send JSON with any media type (or none), so the body decides."""
    return body.lstrip()[:1] in (b"{", b"[", b'"')
