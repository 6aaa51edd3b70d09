"""HTTP conventions every Keel API shares: request IDs, body limits, access logs, metrics,
the last-resort error handler, cursor pagination and ``If-Match``/ETag handling.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Generic, TypeVar

import structlog
from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import Select, literal, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.types import TypeDecorator
from starlette._utils import get_route_path
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keel.core.db import UTCDateTime
from keel.core.errors import (
    BadRequest,
    InternalError,
    PayloadTooLarge,
    PreconditionFailed,
    PreconditionRequired,
    ValidationFailed,
    public_path,
    render_error,
)
from keel.core.input_rules import InputRefused, check_body, check_target, checks_body
from keel.core.logging import get_logger
from keel.core.metrics import UNMATCHED_ROUTE, Metrics

log = get_logger("keel.http")

REQUEST_ID_HEADER = "x-request-id"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


#: Answered by the middleware itself: liveness proves the event loop turns and needs nothing
#: of routing, dependencies or the database, so probe storms stay cheap.
LIVENESS_PATH = "/health/live"
_LIVENESS_BODY = b'{"status":"pass"}'
#: Probes and scrapes are logged at debug: a line per kubelet probe would drown the rest.
_QUIET_PREFIXES = ("/health/", "/metrics")


def accept_request_id(value: str | None) -> str:
    """The caller's request ID when it is safe to log and echo, else a new one."""
    if value and _SAFE_REQUEST_ID.fullmatch(value):
        return value
    return os.urandom(16).hex()


class _BodyTooLarge(Exception):
    pass


def _path_pattern(path: str) -> re.Pattern[str]:
    """``/storage/v1/buckets/*/objects/*``: a ``*`` segment is one segment, a last one the rest."""
    segments = path.split("/")
    parts = [("[^/]+" if segment == "*" else re.escape(segment)) for segment in segments[:-1]]
    last = segments[-1]
    parts.append(".+" if last == "*" else re.escape(last))
    return re.compile("/".join(parts) + r"\Z")


class RequestContextMiddleware:
    """Outermost Keel middleware: one request ID, one log line, one metric per request.

    It also enforces the body size limit while the body streams in (a lying or absent
    ``Content-Length`` does not get past it), answers liveness probes itself, and turns any
    exception that escaped every handler into a bare ``internal`` problem: no stack trace
    ever reaches the client.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        max_body_bytes: int,
        body_limits: Mapping[str, int] | None = None,
        routes: Callable[[], Sequence[Any]] = tuple,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        #: Paths whose bodies may be larger (a 100,000-recipient batch send). A path with
        #: ``*`` is a pattern of streamed bodies (object uploads): a ``*`` segment matches one
        #: segment, a final ``/*`` the rest; their bytes pass through as they come, never
        #: kept for the text checks.
        limits = dict(body_limits or {})
        self.body_limits = {path: limit for path, limit in limits.items() if "*" not in path}
        self.stream_limits = [
            (_path_pattern(path), limit) for path, limit in limits.items() if "*" in path
        ]
        self._routes = routes
        self._endpoint_paths: dict[Any, str] | None = None
        # Labelled children cached: .labels() costs a lock and a dict build per call.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _observe(self, template: str, method: str, status: int, elapsed: float) -> None:
        key = (template, method, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.metrics.requests.labels(template, method, str(status)),
                self.metrics.latency.labels(template, method),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(elapsed)

    def _template(self, scope: Scope) -> str:
        """The route template that answered: FastAPI routes set ``scope["route"]``; plain
        Starlette routes (``/openapi.json``, ``/docs``) only ``scope["endpoint"]``."""
        route_path = getattr(scope.get("route"), "path", None)
        if route_path:
            return _with_include_prefix(scope["path"], str(route_path))
        endpoint = scope.get("endpoint")
        if endpoint is None:
            return UNMATCHED_ROUTE
        if self._endpoint_paths is None:
            self._endpoint_paths = {
                getattr(route, "endpoint", None): route.path
                for route in self._routes()
                if hasattr(route, "path")
            }
        return self._endpoint_paths.get(endpoint, UNMATCHED_ROUTE)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        raw_request_id = None
        declared_length = None
        content_type = None
        for name, value in scope.get("headers") or ():
            if name == b"x-request-id":
                raw_request_id = value.decode("latin-1")
            elif name == b"content-length":
                declared_length = value
            elif name == b"content-type":
                content_type = value.decode("latin-1")
        request_id = accept_request_id(raw_request_id)
        method = scope["method"]
        path = scope["path"]

        if path == LIVENESS_PATH and method in ("GET", "HEAD"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(_LIVENESS_BODY)).encode()),
                        (b"x-request-id", request_id.encode()),
                    ],
                }
            )
            await send(
                {"type": "http.response.body", "body": _LIVENESS_BODY if method == "GET" else b""}
            )
            self._observe(LIVENESS_PATH, method, 200, time.perf_counter() - started)
            return

        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        status = 500
        response_started = False
        request_id_header = (b"x-request-id", request_id.encode())

        async def send_with_request_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), request_id_header]
            await send(message)

        max_body_bytes = self.body_limits.get(path, self.max_body_bytes)
        streamed = False
        for pattern, limit in self.stream_limits:
            if pattern.match(path):
                max_body_bytes, streamed = limit, True
                break
        received = 0
        # The rules of keel.core.input_rules need the whole text body (an escape may straddle
        # two chunks): a copy is kept, at most max_body_bytes.
        text_body = bytearray() if not streamed and checks_body(content_type) else None

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > max_body_bytes:
                    # FastAPI re-raises HTTPException from body reading (anything else becomes
                    # a 400), and the problem handler renders it as payload-too-large.
                    raise HTTPException(413)
                if text_body is not None:
                    text_body.extend(chunk)
                    if not message.get("more_body", False):
                        try:
                            check_body(bytes(text_body), content_type)
                        except InputRefused as refused:
                            raise HTTPException(400, str(refused)) from None
            return message

        self.metrics.in_flight.inc()
        try:
            if declared_length is not None and _too_large(declared_length, max_body_bytes):
                raise _BodyTooLarge
            check_target(path, scope.get("query_string", b""))
            await self.app(scope, limited_receive, send_with_request_id)
        except InputRefused as refused:
            if not response_started:
                await self._send_problem(
                    BadRequest(str(refused)), request_id, path, send_with_request_id
                )
        except _BodyTooLarge:
            if not response_started:
                await self._send_problem(
                    PayloadTooLarge(f"The request body exceeds {max_body_bytes} bytes."),
                    request_id,
                    path,
                    send_with_request_id,
                )
        except Exception as exc:
            # Reported here because this middleware answers before any framework integration
            # of Sentry sees the exception (a no-op when Sentry is not initialised).
            import sentry_sdk  # here, not at import: it is a tenth of a cold start

            sentry_sdk.capture_exception(exc)
            log.exception("http.unhandled_error", method=method, path=public_path(path))
            if not response_started:
                await self._send_problem(InternalError(), request_id, path, send_with_request_id)
        finally:
            self.metrics.in_flight.dec()
            template = self._template(scope)
            if template != UNMATCHED_ROUTE and scope.get("root_path"):
                template = scope["root_path"] + template
            elapsed = time.perf_counter() - started
            self._observe(template, method, status, elapsed)
            emit = log.debug if path.startswith(_QUIET_PREFIXES) else log.info
            emit(
                "http.request",
                method=method,
                route=template,
                status=status,
                duration_ms=round(elapsed * 1000, 2),
            )

    @staticmethod
    async def _send_problem(error: Any, request_id: str, path: str, send: Send) -> None:
        response = render_error(error, request_id, public_path(path))
        await response({"type": "http"}, _empty_receive, send)


def _with_include_prefix(path: str, route_path: str) -> str:
    """The full template of a route reached through ``include_router(prefix=...)``.

    FastAPI keeps included routers as they were declared, so ``scope["route"].path`` lacks
    the include prefix (``/v1/oauth/token`` for ``/auth/v1/oauth/token``). The route template
    matches the tail of the request path segment by segment, so the leading segments the
    template does not cover are the (static) prefix.
    """
    if ":path}" in route_path:  # a path parameter spans segments: no alignment possible
        return route_path
    real_segments = path.split("/")
    extra = len(real_segments) - len(route_path.split("/"))
    if extra <= 0:
        return route_path
    return "/".join(real_segments[: extra + 1]) + route_path


def _too_large(declared_length: bytes, limit: int) -> bool:
    try:
        return int(declared_length) > limit
    except ValueError:
        return False


async def _empty_receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


# ---------------------------------------------------------------------------------------------
# Cursor pagination
# ---------------------------------------------------------------------------------------------

T = TypeVar("T")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


class Page(BaseModel, Generic[T]):
    """One page of a list; pass ``next_cursor`` back as ``cursor`` for the next page."""

    items: list[T]
    next_cursor: str | None = None


@dataclass(frozen=True)
class PageRequest:
    cursor: str | None = None
    limit: int = DEFAULT_PAGE_SIZE

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_PAGE_SIZE:
            raise ValidationFailed(f"limit must be between 1 and {MAX_PAGE_SIZE}.")


def encode_cursor(values: Sequence[Any]) -> str:
    raw = json.dumps(list(values), separators=(",", ":"), default=str).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, width: int) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise ValidationFailed("The cursor is not one this API issued.") from None
    if not isinstance(values, list) or len(values) != width:
        raise ValidationFailed("The cursor is not one this API issued.")
    return values


#: Column types whose values a cursor carries as JSON strings, and how to read them back.
_FROM_CURSOR_STRING: dict[type, Callable[[str], Any]] = {
    datetime: datetime.fromisoformat,
    date: date.fromisoformat,
    Decimal: Decimal,
    uuid.UUID: uuid.UUID,
}


def _cursor_value(column: InstrumentedAttribute[Any], value: Any) -> Any:
    """``value`` as the Python type of ``column``; a forged cursor is a 422, never a 500."""
    invalid = ValidationFailed("The cursor is not one this API issued.")
    sql_type = column.type
    if isinstance(sql_type, TypeDecorator):  # UTCDateTime and the like: the impl's type
        sql_type = sql_type.impl_instance
    try:
        python_type = sql_type.python_type
    except NotImplementedError:
        return value
    if python_type in _FROM_CURSOR_STRING and isinstance(value, str):
        try:
            value = _FROM_CURSOR_STRING[python_type](value)
        except (ValueError, InvalidOperation):
            raise invalid from None
        if isinstance(column.type, UTCDateTime) and value.tzinfo is None:
            raise invalid
        return value
    if isinstance(value, bool) and python_type is not bool:
        raise invalid
    if python_type is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, python_type):
        raise invalid
    return value


async def paginate(
    session: AsyncSession,
    statement: Select[Any],
    page: PageRequest,
    *,
    order_by: Sequence[InstrumentedAttribute[Any]],
    cursor_of: Callable[[Any], Sequence[Any]],
) -> tuple[list[Any], str | None]:
    """Keyset pagination: rows strictly after the cursor in ``order_by`` order (ascending).

    ``order_by`` must end in a unique column so the order is total; ``cursor_of(row)`` gives
    the values of those columns for a row (datetimes, dates, Decimals and UUIDs may be given
    as they are). Cursor values are read back as their column's type and bound with it, so a
    timestamp compares as a timestamp on every database.
    """
    if page.cursor is not None:
        after = decode_cursor(page.cursor, len(order_by))
        bounds = [
            literal(_cursor_value(column, value), type_=column.type)
            for column, value in zip(order_by, after, strict=True)
        ]
        statement = statement.where(tuple_(*order_by) > tuple_(*bounds))
    rows = list(await session.scalars(statement.order_by(*order_by).limit(page.limit + 1)))
    has_more = len(rows) > page.limit
    rows = rows[: page.limit]
    next_cursor = encode_cursor(cursor_of(rows[-1])) if has_more and rows else None
    return rows, next_cursor


# ---------------------------------------------------------------------------------------------
# Optimistic concurrency: ETag / If-Match
# ---------------------------------------------------------------------------------------------


def etag_for(version: int | str) -> str:
    """The strong ETag of a resource version."""
    return f'"{version}"'


def _parse_etags(header: str, *, weak_comparison: bool) -> list[str]:
    tags = [tag.strip() for tag in header.split(",") if tag.strip()]
    return [tag.removeprefix("W/") for tag in tags] if weak_comparison else tags


def check_if_match(if_match: str | None, current_version: int | str, *, required: bool) -> None:
    """Raise 412 when ``If-Match`` names another version (428 when required and absent)."""
    if if_match is None:
        if required:
            raise PreconditionRequired("This write needs an If-Match header with the ETag.")
        return
    # RFC 9110 13.1.1: If-Match uses the strong comparison, so a weak tag never matches.
    tags = _parse_etags(if_match, weak_comparison=False)
    if "*" in tags:
        return
    if etag_for(current_version) not in tags:
        raise PreconditionFailed(
            "The resource changed since it was read.",
            current_etag=etag_for(current_version),
        )


def is_not_modified(if_none_match: str | None, current_version: int | str) -> bool:
    """True when the caller's cached copy (``If-None-Match``) is current: answer 304."""
    if if_none_match is None:
        return False
    tags = _parse_etags(if_none_match, weak_comparison=True)
    return "*" in tags or etag_for(current_version) in tags


class ServiceRouter(APIRouter):
    """A service's top router: declines a path outside ``/<service>/`` without trying its routes.

    FastAPI tries the routes of every included router in turn until one matches. With every
    service mounted, a secret read went through some 180 route patterns of the services
    mounted before it, a fifth of its CPU. ``create_app`` sets :attr:`mount_prefix` when it
    mounts the router.
    """

    mount_prefix: str | None = None

    def match_first(self, *paths: str) -> None:
        """Try the routes of ``paths`` (full paths, e.g. ``/v1/oauth/token``) before the
        others: the hot endpoints, when no earlier route could also match their requests."""
        wanted = set(paths)
        self.routes.sort(key=lambda route: getattr(route, "path", None) not in wanted)

    def declines(self, scope: Scope) -> bool:
        """Whether the request is outside :attr:`mount_prefix`, so none of its routes can match."""
        prefix = self.mount_prefix
        return bool(
            prefix and scope["type"] == "http" and not get_route_path(scope).startswith(prefix)
        )

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if self.declines(scope):
            return Match.NONE, {}
        return super().matches(scope)


class DeferredRouter(ServiceRouter):
    """A service's routes, built when first needed: on the first request under
    :attr:`mount_prefix`, or by :meth:`build` (``create_app`` builds them all before the
    OpenAPI document, which lists every route).

    Building a service's routes imports its router modules, its schemas and what they use,
    and FastAPI analyses each route's dependencies: about half of ``keel serve``'s start
    (issue 15), for routes a process may not serve for a while and that the health checks and
    the ready check never need. Built once, under a lock (concurrent first requests, a thread
    asking for the OpenAPI document); a build that fails raises to the request that asked
    (a problem+json 500) and is tried again by the next one.
    """

    def __init__(self, factory: Callable[[], APIRouter], *, mount_prefix: str) -> None:
        super().__init__()
        self.mount_prefix = mount_prefix
        self._factory: Callable[[], APIRouter] | None = factory
        self._lock = threading.Lock()

    @property
    def is_built(self) -> bool:
        return self._factory is None

    def build(self) -> None:
        """The routes, built now unless they are already. The factory's router's routes
        become this router's own, in its order, each as the factory's router holds it (its
        prefix, tags and route class applied): one router less to match a request through
        than including it would leave."""
        with self._lock:
            factory = self._factory
            if factory is None:
                return
            self.routes.extend(factory().routes)
            self._mark_routes_changed()
            self._factory = None

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if self.declines(scope):
            return Match.NONE, {}
        if self._factory is not None:
            self.build()
        return super().matches(scope)
