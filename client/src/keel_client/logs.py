"""A service's own logs as JSON lines, each with its request's id and trace context.

What a project template used to copy as ``setup_logging``: one call at start-up, and one
ASGI middleware that gives every request an id (the caller's ``X-Request-ID`` when it sent a
usable one, else a new one), echoes it on the response and puts it, with the W3C trace
context, on every log line written while the request runs::

    import logging
    from fastapi import FastAPI
    from keel_client.logs import RequestContextMiddleware, configure_logging

    configure_logging("INFO")               # the root logger writes JSON lines to stderr
    app = FastAPI()
    app.add_middleware(RequestContextMiddleware)

    @app.get("/orders/{order_id}")
    async def order(order_id: str) -> dict[str, str]:
        logging.getLogger("orders").info("order read", extra={"order_id": order_id})
        # {"time": "2026-12-06T23:20:01.532Z", "level": "INFO", "logger": "orders",
        #  "message": "order read", "request_id": "9f1c…", "trace_id": "4bf9…",
        #  "span_id": "00f0…", "order_id": "7"}
        return {"id": order_id}

The trace context is the current OpenTelemetry span's when one is recording (with
``opentelemetry-api`` installed and a tracer provider set), else the ``traceparent`` header
the request came with. Nothing from the request's headers, query or body is logged but the
id, the trace context, the method and the path.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

try:  # opentelemetry-api is an optional extra of keel-client.
    from opentelemetry import trace
except ImportError:  # pragma: no cover - exercised only without the extra
    trace = None  # type: ignore[assignment]

__all__ = [
    "REQUEST_ID_HEADER",
    "JSONLogFormatter",
    "RequestContext",
    "RequestContextMiddleware",
    "configure_logging",
    "current_request",
]

REQUEST_ID_HEADER = "x-request-id"
#: A caller's request id is kept when it is this plain (it is echoed and logged); anything
#: else is replaced by a new one, so a header cannot forge log lines or carry a payload.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
#: The attributes every ``LogRecord`` has: what is left on a record is the caller's ``extra``.
_RECORD_FIELDS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RequestContext:
    """The request a log line is written for: its id, and the trace it belongs to."""

    request_id: str
    trace_id: str | None = None
    parent_span_id: str | None = None


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "keel_request_context", default=None
)


def current_request() -> RequestContext | None:
    """The context of the request being handled (``None`` outside one): pass its
    ``request_id`` on to an audit event or a job."""
    return _current.get()


def _trace_fields() -> dict[str, str]:
    if trace is not None:
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            return {
                "trace_id": format(span_context.trace_id, "032x"),
                "span_id": format(span_context.span_id, "016x"),
            }
    context = _current.get()
    if context is not None and context.trace_id is not None:
        fields = {"trace_id": context.trace_id}
        if context.parent_span_id is not None:
            fields["parent_span_id"] = context.parent_span_id
        return fields
    return {}


class JSONLogFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, RFC 3339), ``level``, ``logger``,
    ``message``, the request's ``request_id``, ``trace_id`` and ``span_id`` when there is
    one, every ``extra=`` field, and ``exception`` (the formatted traceback) for
    ``log.exception``. Values JSON cannot hold are written as their ``str()``.
    """

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        document: dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = _current.get()
        if context is not None:
            document["request_id"] = context.request_id
        document.update(_trace_fields())
        for name, value in vars(record).items():
            if name not in _RECORD_FIELDS and not name.startswith("_"):
                document.setdefault(name, value)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        return json.dumps(document, default=str, ensure_ascii=False)


def configure_logging(level: int | str = "INFO", *, stream: IO[str] | None = None) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr) as JSON lines.

    The root logger's handlers are replaced by one; calling it again replaces that one, so a
    test or a reload never doubles the lines. uvicorn's access log is left to the middleware's
    own line (``access_log=False``, or ``uvicorn --no-access-log``).
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JSONLogFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def context_of(scope: Scope) -> RequestContext:
    """The context of a request: its own id when usable, else a new one; the trace of its
    ``traceparent`` header when it has a valid one."""
    request_id = _header(scope, REQUEST_ID_HEADER.encode())
    if request_id is None or not _REQUEST_ID.fullmatch(request_id):
        request_id = uuid.uuid4().hex
    trace_id = parent_span_id = None
    traceparent = _header(scope, b"traceparent")
    if traceparent is not None:
        match = _TRACEPARENT.fullmatch(traceparent.strip())
        if match is not None and set(match[1]) != {"0"} and set(match[2]) != {"0"}:
            trace_id, parent_span_id = match[1], match[2]
    return RequestContext(request_id, trace_id, parent_span_id)


class RequestContextMiddleware:
    """Pure ASGI middleware: every HTTP request gets a :class:`RequestContext` for its log
    lines, its id echoed as ``X-Request-ID``, and one ``request`` log line at its end
    (``method``, ``path``, ``status``, ``duration_ms``) on the ``access`` logger unless
    ``access_log=False``.
    """

    def __init__(self, app: ASGIApp, *, access_log: bool = True, logger: str = "access") -> None:
        self.app = app
        self.access_log = access_log
        self.log = logging.getLogger(logger)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context = context_of(scope)
        token = _current.set(context)
        started = time.perf_counter()
        status = 500
        echoed = (REQUEST_ID_HEADER.encode(), context.request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [
                    (key, value)
                    for key, value in message.get("headers", ())
                    if key.lower() != REQUEST_ID_HEADER.encode()
                ]
                message["headers"] = [*headers, echoed]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.access_log:
                self.log.info(
                    "request",
                    extra={
                        "method": scope.get("method"),
                        "path": scope.get("path"),
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                    },
                )
            _current.reset(token)
