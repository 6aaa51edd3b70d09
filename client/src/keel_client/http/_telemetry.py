"""Tracing, request IDs and logging for the base client; OpenTelemetry only when importable.

Secrets never reach a log line or a span: URLs are reduced by ``redact_url`` (no userinfo,
query values replaced), and headers are never logged at all.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx

try:  # opentelemetry-api is an optional extra of keel-client.
    from opentelemetry import propagate, trace
except ImportError:  # pragma: no cover - exercised only without the extra
    propagate = None  # type: ignore[assignment]
    trace = None  # type: ignore[assignment]

__all__ = ["Tracing", "logger", "redact_url"]

logger = logging.getLogger("keel_client.http")


def redact_url(url: httpx.URL) -> str:
    """``url`` safe to log: no credentials, and every query value replaced by ``REDACTED``.

    Example::

        >>> redact_url(httpx.URL("https://u:p@api.example/v1?token=abc&page=2"))
        'https://api.example/v1?token=REDACTED&page=REDACTED'
    """
    port = f":{url.port}" if url.port is not None else ""
    safe = f"{url.scheme}://{url.host}{port}{url.path}"
    if url.query:
        names = [name for name, _ in url.params.multi_items()]
        safe += "?" + "&".join(f"{name}=REDACTED" for name in names)
    return safe


class Tracing:
    """One OpenTelemetry CLIENT span per attempt, and W3C ``traceparent`` on the request.

    Without opentelemetry-api installed every method is a no-op.
    """

    def __init__(self, tracer_provider: Any = None) -> None:
        self._tracer: Any = None
        if trace is not None:
            self._tracer = trace.get_tracer("keel_client.http", tracer_provider=tracer_provider)

    @contextlib.contextmanager
    def attempt(
        self, request: httpx.Request, *, safe_url: Callable[[], str], attempt: int, request_id: str
    ) -> Iterator[Any]:
        if self._tracer is None:
            yield None
            return
        attributes: dict[str, Any] = {
            "http.request.method": request.method,
            "url.full": safe_url(),
            "server.address": request.url.host,
            "http.request.header.x-request-id": request_id,
        }
        if request.url.port is not None:
            attributes["server.port"] = request.url.port
        if attempt:
            attributes["http.request.resend_count"] = attempt
        with self._tracer.start_as_current_span(
            request.method, kind=trace.SpanKind.CLIENT, attributes=attributes
        ) as span:
            # Injected inside the span, so the upstream's span is this attempt's child.
            propagate.inject(request.headers)
            yield span

    @staticmethod
    def record_status(span: Any, status: int) -> None:
        if span is not None:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(trace.Status(trace.StatusCode.ERROR))


def log_failed_attempt(
    *,
    method: str,
    safe_url: str,
    attempt: int,
    request_id: str,
    status: int | None,
    error: str,
    retry_in: float | None,
) -> None:
    """One structured line per failed attempt (stdlib logging, fields in ``extra``)."""
    if not logger.isEnabledFor(logging.WARNING):
        return
    logger.warning(
        "HTTP attempt failed: %s %s (%s)%s",
        method,
        safe_url,
        error,
        f", retrying in {retry_in:.3f}s" if retry_in is not None else "",
        extra={
            "http_method": method,
            "http_url": safe_url,
            "http_status": status,
            "attempt": attempt,
            "request_id": request_id,
            "error": error,
            "will_retry": retry_in is not None,
            "retry_in_seconds": retry_in,
        },
    )
