"""Permission matching, the one rule the server and every SDK share.

A permission is ``service:resource:action`` (``secrets:secret:read``). A granted permission
may use ``*`` for any one segment (``secrets:*:read``), and a trailing ``*`` segment covers
every deeper segment too (``secrets:*`` grants ``secrets:secret:read``; ``*`` grants all).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_SEGMENT = re.compile(r"^(\*|[a-z0-9][a-z0-9_.-]*)$")


def is_valid_permission(permission: str) -> bool:
    """True when ``permission`` is 1 to 5 colon-separated lowercase segments or ``*``."""
    segments = permission.split(":")
    return 1 <= len(segments) <= 5 and all(_SEGMENT.fullmatch(s) for s in segments)


def permission_matches(granted: str, required: str) -> bool:
    """Does the ``granted`` permission (maybe with wildcards) cover ``required``?"""
    granted_segments = granted.split(":")
    required_segments = required.split(":")
    for index, segment in enumerate(granted_segments):
        if index >= len(required_segments):
            return False
        if segment == "*" and index == len(granted_segments) - 1:
            return True
        if segment != "*" and segment != required_segments[index]:
            return False
    return len(granted_segments) == len(required_segments)


def has_permission(granted: Iterable[str], required: str) -> bool:
    return any(permission_matches(permission, required) for permission in granted)


def narrow_permissions(held: Iterable[str], requested: Iterable[str]) -> list[str]:
    """What ``held`` permissions remain when limited to ``requested`` ones (token scopes,
    API key scopes): each requested permission a held one covers, and each held permission
    a requested one covers. Never more than ``held``: ``["auth:*"]`` keeps a held
    ``auth:user:read``; a held ``*`` keeps ``auth:*`` itself.
    """
    held = list(held)
    narrowed: set[str] = set()
    for scope in requested:
        if has_permission(held, scope):
            narrowed.add(scope)
        narrowed.update(permission for permission in held if permission_matches(scope, permission))
    return sorted(narrowed)
