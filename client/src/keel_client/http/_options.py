"""Per-call options that override a client's defaults (stripe-python's ``RequestOptions``).

Pass them as keyword arguments to any request method::

    await api.post("/charges", json=body, idempotent=True, deadline=5.0)
    await api.get("/report", timeout=httpx.Timeout(60.0), max_retries=0)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TypedDict

import httpx

__all__ = ["CallOptions", "RequestOptions", "resolve_options"]


class RequestOptions(TypedDict, total=False):
    """What one call may override. Every key is optional.

    - ``timeout``: connect/read/write/pool timeouts of each attempt (a float sets all four).
    - ``deadline``: seconds for the whole call, retries and their sleeps included.
    - ``max_retries``: retries after the first attempt (0 disables retrying).
    - ``idempotent``: send a generated ``Idempotency-Key`` (the same on every attempt), which
      makes a POST or PATCH retryable.
    - ``idempotency_key``: send this key instead of a generated one (implies ``idempotent``).
    - ``request_id``: the ``X-Request-ID`` to send (default: generated, or the one in headers).

    Example::

        options: RequestOptions = {"deadline": 2.0, "max_retries": 1}
        await api.get("/ping", **options)
    """

    timeout: float | httpx.Timeout
    deadline: float | None
    max_retries: int
    idempotent: bool
    idempotency_key: str
    request_id: str


@dataclass(frozen=True, slots=True)
class CallOptions:
    """A call's options after merging its ``RequestOptions`` over the client defaults."""

    timeout: httpx.Timeout
    deadline: float | None
    max_retries: int
    idempotency_key: str | None
    request_id: str | None


def resolve_options(
    options: RequestOptions,
    *,
    timeout: httpx.Timeout,
    deadline: float | None,
    max_retries: int,
) -> CallOptions:
    """Merge per-call ``options`` over the client's defaults (pure but for key generation)."""
    call_timeout = options.get("timeout", timeout)
    if not isinstance(call_timeout, httpx.Timeout):
        call_timeout = httpx.Timeout(call_timeout)
    key = options.get("idempotency_key")
    if key is None and options.get("idempotent", False):
        key = str(uuid.uuid4())
    return CallOptions(
        timeout=call_timeout,
        deadline=options.get("deadline", deadline),
        max_retries=options.get("max_retries", max_retries),
        idempotency_key=key,
        request_id=options.get("request_id"),
    )
