"""The per-route response-cache policy of the gateway (wire model).

The gateway's proxy is a *shared* cache in RFC 9111's sense: one stored response may answer
many callers. This model only says whether a route caches and within which bounds; the rules
of what may be stored and for how long are RFC 9111's, applied by the proxy's engine
(``keel.gateway.proxy.cache``). Its defaults are the conservative ones: caching off, no
heuristic freshness, nothing stored for an authorised request unless §3.5 allows it.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["CachePolicy"]

MIB = 1024 * 1024

#: An HTTP field name (RFC 9110 §5.1: a token).
_FIELD_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class CachePolicy(BaseModel):
    """Whether and how a route's GET/HEAD responses are cached by the gateway.

    Example::

        CachePolicy(enabled=True, max_body_bytes=256 * 1024, key_headers=["Accept-Language"])

    ``heuristic`` turns on RFC 9111 §4.2.2 heuristic freshness (10 % of the time since
    ``Last-Modified``) for responses without explicit freshness. ``cache_authorized`` lets a
    response to a request carrying ``Authorization`` be stored, and even then only when
    §3.5 allows it (``public``, ``s-maxage`` or ``must-revalidate``). ``key_headers`` are
    request headers that split the cache key beyond what the upstream's ``Vary`` says.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    max_body_bytes: int = Field(default=MIB, ge=1, le=64 * MIB)
    max_entries: int = Field(default=10_000, ge=1, le=1_000_000)
    heuristic: bool = False
    cache_authorized: bool = False
    key_headers: tuple[str, ...] = ()

    @field_validator("key_headers")
    @classmethod
    def _header_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        # Lower-cased once here, so the engine compares raw ASGI header names directly.
        for name in names:
            if not _FIELD_NAME.match(name):
                raise ValueError(f"{name!r} is not an HTTP header name")
        return tuple(dict.fromkeys(name.lower() for name in names))
