"""What the edge must keep over any request, checked on generated ones (hypothesis).

Invariant: **no request reaches a protected route's upstream without the route's checks**.
However a path is spelt — dot segments, empty segments, percent-escapes, trailing slashes,
another method, another host — the enforcer lets an anonymous request through only where the
route that takes it is anonymous, and an upstream that resolves the path as servers do
(``posixpath.normpath`` of the unescaped path) never lands under a protected prefix.
"""

from __future__ import annotations

import asyncio
import posixpath
from typing import Any
from urllib.parse import unquote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keel_client.edge._enforce import EdgeEnforcer
from keel_client.edge._model import EdgePolicy
from keel_client.edge._ratelimit import MemoryLimiterStore

POLICY = EdgePolicy.model_validate(
    {
        "routes": [
            {"name": "public", "path": "/public", "auth": {"mode": "none"}},
            {"name": "public-admin", "path": "/public/admin", "auth": {"mode": "jwt"}},
            {"name": "admin", "path": "/admin", "auth": {"mode": "jwt"}},
            {
                "name": "files",
                "path": "/files/{name}",
                "match": "pattern",
                "auth": {"mode": "none"},
            },
            {
                "name": "reports",
                "path": "/reports",
                "methods": ["GET"],
                "auth": {"mode": "none"},
                "hosts": ["public.example.com"],
            },
            {"name": "reports-write", "path": "/reports", "auth": {"mode": "jwt"}},
        ]
    }
)
PROTECTED = ("/admin", "/public/admin", "/reports")
ENFORCER = EdgeEnforcer(POLICY, authenticator=None, limiter=MemoryLimiterStore())

segments = st.sampled_from(
    ["public", "admin", "files", "reports", "..", ".", "", "%2e%2e", "%2E", "a", "%2fadmin", "x y"]
)
paths = st.lists(segments, min_size=0, max_size=6).map(lambda parts: "/" + "/".join(parts))
methods = st.sampled_from(["GET", "POST", "DELETE", "HEAD", "OPTIONS", "PATCH"])
hosts = st.sampled_from([None, "public.example.com", "PUBLIC.example.com.", "other.example.com"])


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def check(raw_path: str, method: str, host: str | None) -> tuple[int | None, str | None]:
    path = unquote(raw_path)  # what an ASGI server puts in scope["path"]
    headers = [(b"host", host.encode())] if host is not None else []
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": raw_path.encode(),
        "query_string": b"",
        "headers": headers,
        "client": ("203.0.113.9", 5000),
    }
    verdict = asyncio.run(ENFORCER.check(scope, _no_body))
    status = verdict.refusal.status if verdict.refusal is not None else None
    route = verdict.match.route.name if verdict.match is not None else None
    return status, route


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_path=paths, method=methods, host=hosts)
def test_an_anonymous_request_never_reaches_a_protected_path(
    raw_path: str, method: str, host: str | None
) -> None:
    status, route = check(raw_path, method, host)
    if status is not None:
        assert status in (400, 401, 404, 405), (raw_path, method, host, status)
        return
    # Let through without a credential: the route must be anonymous ...
    assert route in ("public", "files", "reports"), (raw_path, route)
    # ... and what a server behind resolves the path to is not under a protected prefix,
    # except the one anonymous route that is, on purpose, host- and method-specific.
    resolved = posixpath.normpath(unquote(raw_path))
    for prefix in PROTECTED:
        if resolved == prefix or resolved.startswith(prefix + "/"):
            assert route == "reports", (raw_path, resolved, route)
            assert method == "GET", (raw_path, method)
            assert (host or "").lower().rstrip(".") == "public.example.com"


@settings(max_examples=200, deadline=None)
@given(raw_path=paths, method=methods, host=hosts)
def test_the_same_request_always_gets_the_same_answer(
    raw_path: str, method: str, host: str | None
) -> None:
    """Matching depends on the request alone (no state carried between requests)."""
    assert check(raw_path, method, host) == check(raw_path, method, host)
