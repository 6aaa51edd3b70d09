"""RFC 9457 problem details: one error base, a stable ``type`` per error, one renderer.

Every error that leaves a Keel API is ``application/problem+json``. Services raise a
:class:`KeelError` subclass from plain code; the handlers installed by
:func:`install_error_handlers` turn it, FastAPI's validation errors and Starlette's HTTP
errors into problem documents. Nothing else ever reaches the client: an unexpected exception
becomes a bare ``internal`` problem carrying only the request ID.

Exception tree::

    KeelError
     ├── BadRequest            400  malformed-body
     ├── ValidationFailed      422  validation
     ├── Unauthorized          401  unauthorized
     ├── Forbidden             403  forbidden
     ├── NotFound              404  not-found
     ├── MethodNotAllowed      405  method-not-allowed
     ├── Conflict              409  conflict
     ├── PreconditionFailed    412  precondition-failed
     ├── PreconditionRequired  428  precondition-required
     ├── PayloadTooLarge       413  payload-too-large
     ├── RateLimited           429  rate-limited
     ├── HeadersTooLarge       431  headers-too-large
     ├── ServiceUnavailable    503  unavailable
     └── InternalError         500  internal
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as SQLAlchemyPoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from keel.core.logging import get_logger

log = get_logger("keel.http")

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:keel:problem:"


def problem_type(slug: str) -> str:
    return PROBLEM_TYPE_PREFIX + slug


class KeelError(Exception):
    """Base of every error a Keel API answers with."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal server error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.headers = dict(headers or {})
        self.extensions = extensions

    @property
    def type(self) -> str:
        return problem_type(self.slug)


class BadRequest(KeelError):
    status, slug, title = 400, "malformed-body", "Malformed request"


class ValidationFailed(KeelError):
    status, slug, title = 422, "validation", "Request validation failed"


class Unauthorized(KeelError):
    status, slug, title = 401, "unauthorized", "Authentication required"

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(detail, **kwargs)


class Forbidden(KeelError):
    status, slug, title = 403, "forbidden", "Permission denied"


class NotFound(KeelError):
    status, slug, title = 404, "not-found", "Not found"


class MethodNotAllowed(KeelError):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"


class Conflict(KeelError):
    status, slug, title = 409, "conflict", "Conflict"


class PreconditionFailed(KeelError):
    status, slug, title = 412, "precondition-failed", "Precondition failed"


class PayloadTooLarge(KeelError):
    status, slug, title = 413, "payload-too-large", "Request body too large"


class UnsupportedMediaType(KeelError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class PreconditionRequired(KeelError):
    status, slug, title = 428, "precondition-required", "Precondition required"


class RateLimited(KeelError):
    status, slug, title = 429, "rate-limited", "Too many requests"

    def __init__(self, detail: str | None = None, *, retry_after: int, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"Retry-After": str(retry_after)})
        super().__init__(detail, **kwargs)


class HeadersTooLarge(KeelError):
    """The request head (target and headers) is over ``KEEL_MAX_HEADER_BYTES``: answered by
    the HTTP protocol of ``keel serve`` (``keel.core.http_protocol``) before the app runs."""

    status, slug, title = 431, "headers-too-large", "Request header fields too large"


class ServiceUnavailable(KeelError):
    status, slug, title = 503, "unavailable", "Service unavailable"


class InternalError(KeelError):
    status, slug, title = 500, "internal", "Internal server error"


#: Status codes Starlette raises itself (routing, methods) mapped to our error classes.
_HTTP_STATUS_ERRORS: dict[int, type[KeelError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        PreconditionFailed,
        PayloadTooLarge,
        UnsupportedMediaType,
        PreconditionRequired,
        RateLimited,
        HeadersTooLarge,
        ServiceUnavailable,
    )
}

#: Every problem type Keel answers with, for the docs and for tests.
_ALL_ERRORS: list[type[KeelError]] = [
    *_HTTP_STATUS_ERRORS.values(),
    ValidationFailed,
    InternalError,
]
#: The type of an HTTP error no Keel error class covers (e.g. a 418 raised by a library).
GENERIC_HTTP_ERROR_SLUG = "http-error"
PROBLEM_TYPES = sorted(
    {problem_type(cls.slug) for cls in _ALL_ERRORS} | {problem_type(GENERIC_HTTP_ERROR_SLUG)}
)


def problem_response(
    *,
    status: int,
    slug: str,
    title: str,
    detail: str | None = None,
    instance: str | None = None,
    request_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> Response:
    body: dict[str, Any] = {"type": problem_type(slug), "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    if request_id:
        body["request_id"] = request_id
    if extensions:
        body.update({k: v for k, v in extensions.items() if k not in body})
    return JSONResponse(
        body, status_code=status, headers=dict(headers or {}), media_type=PROBLEM_CONTENT_TYPE
    )


def render_error(error: KeelError, request_id: str | None, instance: str | None) -> Response:
    return problem_response(
        status=error.status,
        slug=error.slug,
        title=error.title,
        detail=error.detail,
        instance=instance,
        request_id=request_id,
        headers=error.headers,
        extensions=error.extensions,
    )


#: Path prefixes whose next segment is a credential (a signed URL's token): shown as
#: ``{token}`` wherever a path is echoed (a problem's ``instance``) or logged.
_CREDENTIAL_PREFIXES: list[str] = []


def register_credential_path(prefix: str) -> None:
    """Declare that the segment after ``prefix`` (``/storage/v1/signed/``) is a credential."""
    if prefix not in _CREDENTIAL_PREFIXES:
        _CREDENTIAL_PREFIXES.append(prefix)


def public_path(path: str) -> str:
    """``path`` as it may be shown: a credential segment replaced by ``{token}``."""
    for prefix in _CREDENTIAL_PREFIXES:
        if path.startswith(prefix):
            _, slash, rest = path[len(prefix) :].partition("/")
            return f"{prefix}{{token}}{slash}{rest}"
    return path


def _request_id(request: Request) -> str | None:
    value = request.scope.get("state", {}).get("request_id")
    return value if isinstance(value, str) else None


def describe_validation_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Pydantic errors without the offending input, which may hold a secret; each once (a
    body that a dependency reads too is validated twice, and told twice)."""
    described: list[dict[str, Any]] = []
    for error in errors:
        entry = {
            "location": [str(part) for part in error.get("loc", ())],
            "message": error.get("msg", "invalid"),
            "code": error.get("type", "invalid"),
        }
        if entry not in described:
            described.append(entry)
    return described


async def _keel_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, KeelError)
    return render_error(exc, _request_id(request), public_path(request.url.path))


async def _validation_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(error.get("type") == "json_invalid" for error in errors):
        return render_error(
            BadRequest("The request body is not valid JSON."),
            _request_id(request),
            public_path(request.url.path),
        )
    if _is_json_body_sent_as_another_type(request, errors):
        sent = request.headers.get("content-type") or "no Content-Type"
        return render_error(
            UnsupportedMediaType(
                f"The body must be JSON sent with Content-Type: application/json (not {sent})."
            ),
            _request_id(request),
            public_path(request.url.path),
        )
    return render_error(
        ValidationFailed(
            "The request does not match the schema.", errors=describe_validation_errors(errors)
        ),
        _request_id(request),
        public_path(request.url.path),
    )


def _is_json_body_sent_as_another_type(request: Request, errors: Sequence[Any]) -> bool:
    """Whether a JSON body was refused as a whole because it was not declared JSON: FastAPI
    then validates the raw bytes and says "Input should be a valid dictionary"."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "application/json" or media_type.endswith("+json"):
        return False
    return any(
        tuple(error.get("loc", ())) == ("body",) and error.get("type") != "missing"
        for error in errors
    )


async def _http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    error_class = _HTTP_STATUS_ERRORS.get(exc.status_code)
    if error_class is None:
        return problem_response(
            status=exc.status_code,
            slug=GENERIC_HTTP_ERROR_SLUG,
            title="HTTP error",
            detail=str(exc.detail),
            instance=public_path(request.url.path),
            request_id=_request_id(request),
            headers=exc.headers,
        )
    error = error_class.__new__(error_class)
    KeelError.__init__(error, None, headers=exc.headers)
    if exc.detail and exc.detail != HTTPStatus(exc.status_code).phrase:
        error.detail = str(exc.detail)  # raised by Keel (the input rules), or by FastAPI
    if exc.status_code == 404:
        error.detail = f"No route for {request.method} {public_path(request.url.path)}."
    return render_error(error, _request_id(request), public_path(request.url.path))


async def _pool_exhausted_handler(request: Request, exc: Exception) -> Response:
    """Every pooled database connection stayed busy for the pool's timeout: a burst, not a
    fault of the request, so a 503 the client may retry rather than a 500."""
    error = ServiceUnavailable(
        "Every database connection is busy; retry shortly.", headers={"Retry-After": "1"}
    )
    return render_error(error, _request_id(request), public_path(request.url.path))


#: Integrity violations two requests at once can cause: a unique key taken, a row referred
#: to deleted (PostgreSQL's codes, then SQLite's messages).
_RACE_SQLSTATES = frozenset({"23505", "23503"})
_SQLITE_RACES = ("UNIQUE constraint failed", "FOREIGN KEY constraint failed")
#: SQLite's answer once a writer waited its busy timeout out.
_SQLITE_BUSY = "database is locked"


async def _integrity_conflict_handler(request: Request, exc: Exception) -> Response:
    """A unique or foreign key the database enforced that the service's own checks did not
    catch: two requests creating the same name at once (each saw it free), or a row removed
    under a change. The client may read again and retry, so a 409, not a 500. Only the
    constraint's name is logged: the statement's values may hold a password hash or a
    secret. Any other violation (``NOT NULL``, ``CHECK``) is a fault of Keel's: a 500."""
    driver_error = getattr(exc, "orig", None)
    first_line = str(driver_error).split("\n", 1)[0]
    sqlstate = str(getattr(driver_error, "sqlstate", ""))
    if sqlstate not in _RACE_SQLSTATES and not first_line.startswith(_SQLITE_RACES):
        raise exc  # a NOT NULL or CHECK violation is a fault of Keel's: a 500, reported
    constraint = getattr(driver_error, "constraint_name", None) or first_line[:200]
    log.warning("db.integrity_conflict", path=public_path(request.url.path), constraint=constraint)
    error = Conflict(
        "The request conflicts with a change made at the same time; read the current state "
        "and retry."
    )
    return render_error(error, _request_id(request), public_path(request.url.path))


async def _data_refused_handler(request: Request, exc: Exception) -> Response:
    """A value the database refused as data (SQLSTATE class 22: a number beyond its column's
    range, a character its encoding cannot hold). It came with the request, so a 400; the
    edge rules and schemas should have refused it first, so it is logged with its SQLSTATE
    (never the value). SQLite busy past its timeout is a 503. Any other database error
    stays a 500."""
    driver_error = getattr(exc, "orig", None)
    if str(driver_error).startswith(_SQLITE_BUSY):
        # SQLite's writers take turns; one that waited its whole busy timeout met a burst
        # of writes, not a fault of the request: a 503 to retry, as an exhausted pool.
        log.warning("db.sqlite_busy", path=public_path(request.url.path))
        busy = ServiceUnavailable(
            "The database is busy with other writes; retry shortly.",
            headers={"Retry-After": "1"},
        )
        return render_error(busy, _request_id(request), public_path(request.url.path))
    sqlstate = str(getattr(driver_error, "sqlstate", ""))
    if not sqlstate.startswith("22"):
        raise exc
    log.warning("db.data_refused", path=public_path(request.url.path), sqlstate=sqlstate)
    error = BadRequest("A value of the request is out of range or cannot be stored.")
    return render_error(error, _request_id(request), public_path(request.url.path))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(SQLAlchemyPoolTimeout, _pool_exhausted_handler)
    app.add_exception_handler(IntegrityError, _integrity_conflict_handler)
    app.add_exception_handler(DBAPIError, _data_refused_handler)
    app.add_exception_handler(KeelError, _keel_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
