"""Errors raised by ``keel_client.http``.

One base, so ``except KeelHTTPError`` catches everything the base client raises::

    KeelHTTPError                  .status .problem_type .code .request_id .title .detail
    ├── HTTPStatusError            the upstream answered with an error status (.response, .problem)
    │   ├── ClientError            4xx
    │   └── ServerError            5xx
    ├── RequestTimeout             a timeout fired or the call's deadline passed
    │                              (also a subclass of the builtin ``TimeoutError``)
    ├── TransportError             no usable response: connection refused or reset, protocol error
    ├── CircuitOpenError           the upstream host's circuit is open; failed fast, nothing sent
    ├── RetryBudgetExceeded        a retry was due but the retry budget is spent (.last_error)
    ├── ResponseValidationError    the body did not match ``response_model``
    ├── SSRFBlockedError           the destination was refused by the SSRF policy
    └── SignatureVerificationError receiving side: an RFC 9421 signature did not verify

``RequestTimeout`` is deliberately not called ``TimeoutError``: that would shadow the builtin in
any module doing ``from keel_client.http import *``. It subclasses the builtin instead, so code
that already catches ``TimeoutError`` keeps working.

Every error carries the HTTP status (``None`` when no response arrived), the RFC 9457 problem
``type`` and a short ``code``, and the request ID the call was sent with (or the one the upstream
answered with), so a log line or a support ticket can name the exact request.
"""

from __future__ import annotations

import builtins
import json
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = [
    "CircuitOpenError",
    "ClientError",
    "HTTPStatusError",
    "KeelHTTPError",
    "Problem",
    "RequestTimeout",
    "ResponseValidationError",
    "RetryBudgetExceeded",
    "SSRFBlockedError",
    "ServerError",
    "SignatureVerificationError",
    "TransportError",
    "error_for_response",
    "parse_problem",
]

PROBLEM_CONTENT_TYPE = "application/problem+json"
_PROBLEM_MEMBERS = frozenset({"type", "title", "status", "detail", "instance"})


@dataclass(frozen=True, slots=True)
class Problem:
    """An RFC 9457 problem details object, as parsed from an ``application/problem+json`` body.

    ``request_id`` and ``code`` are the extension members Keel services send; anything else
    the upstream added is kept in ``extensions``.

    Example::

        try:
            await api.get("/invoices/42")
        except ClientError as error:
            if error.problem is not None and error.problem.code == "invoice_not_found":
                ...
    """

    type: str = "about:blank"
    title: str | None = None
    status: int | None = None
    detail: str | None = None
    instance: str | None = None
    code: str | None = None
    request_id: str | None = None
    extensions: dict[str, Any] = field(default_factory=dict)


def parse_problem(response: httpx.Response) -> Problem | None:
    """The response's RFC 9457 problem, or ``None`` when the body is not ``problem+json``.

    A body that claims to be a problem but is not a JSON object yields ``None`` as well: an
    error path must never raise a second, unrelated error.
    """
    content_type = response.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != PROBLEM_CONTENT_TYPE:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    status = body.get("status")
    return Problem(
        type=str(body.get("type") or "about:blank"),
        title=_optional_str(body.get("title")),
        status=status if isinstance(status, int) else None,
        detail=_optional_str(body.get("detail")),
        instance=_optional_str(body.get("instance")),
        code=_optional_str(body.get("code")),
        request_id=_optional_str(body.get("request_id")),
        extensions={
            key: value
            for key, value in body.items()
            if key not in _PROBLEM_MEMBERS and key not in {"code", "request_id"}
        },
    )


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


class KeelHTTPError(Exception):
    """Base of every error ``keel_client.http`` raises.

    Example::

        try:
            invoice = await billing.invoice("42")
        except KeelHTTPError as error:
            log.warning("billing failed", status=error.status, code=error.code,
                        request_id=error.request_id)
    """

    #: Stable short code of this error class; a problem body's ``code`` overrides it.
    default_code = "http_error"
    #: RFC 9457 ``type`` of this error class; a problem body's ``type`` overrides it.
    default_problem_type = "about:blank"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        problem_type: str | None = None,
        code: str | None = None,
        request_id: str | None = None,
        title: str | None = None,
        detail: str | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.problem_type = problem_type or self.default_problem_type
        self.code = code or self.default_code
        self.request_id = request_id
        self.title = title
        self.detail = detail
        self.method = method
        #: The URL with its query string and credentials removed (safe to log).
        self.url = url

    def __str__(self) -> str:
        parts = [self.message]
        if self.status is not None:
            parts.append(f"status={self.status}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        return " ".join(parts)


class HTTPStatusError(KeelHTTPError):
    """The upstream answered with a 4xx or 5xx status; ``response`` and ``problem`` tell more.

    Example::

        except HTTPStatusError as error:
            print(error.status, error.problem.title if error.problem else error.response.text)
    """

    default_code = "http_status"

    def __init__(
        self, message: str, *, response: httpx.Response, problem: Problem | None, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.response = response
        self.problem = problem


class ClientError(HTTPStatusError):
    """A 4xx answer: the request was wrong; sending it again will not help.

    Example::

        except ClientError as error:
            if error.status == 404: return None
    """

    default_code = "client_error"


class ServerError(HTTPStatusError):
    """A 5xx answer that was not retried, or whose retries ran out.

    Example::

        except ServerError as error:
            metrics.upstream_failures.inc()
    """

    default_code = "server_error"


class RequestTimeout(KeelHTTPError, builtins.TimeoutError):
    """A connect/read/write/pool timeout fired or the call's overall deadline passed.

    Also a builtin ``TimeoutError``, so existing ``except TimeoutError`` blocks catch it.

    Example::

        try:
            await api.get("/slow", deadline=2.0)
        except RequestTimeout:
            ...
    """

    default_code = "timeout"


class TransportError(KeelHTTPError):
    """No usable response arrived: connection refused or reset, TLS or protocol error.

    Example::

        except TransportError as error:
            log.warning("upstream unreachable", request_id=error.request_id)
    """

    default_code = "transport_error"


class CircuitOpenError(KeelHTTPError):
    """The upstream host's circuit breaker is open; the call failed fast without a request.

    ``retry_after`` is the number of seconds until the breaker lets a probe through.

    Example::

        except CircuitOpenError as error:
            return cached_fallback()
    """

    default_code = "circuit_open"

    def __init__(self, message: str, *, host: str, retry_after: float, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.host = host
        self.retry_after = retry_after


class RetryBudgetExceeded(KeelHTTPError):
    """A retry was due but the client's retry budget is spent (an outage is under way).

    Carries the status, code and request ID of ``last_error``, the failure that would have
    been retried; it is also the ``__cause__``.

    Example::

        except RetryBudgetExceeded as error:
            raise error.last_error
    """

    default_code = "retry_budget_exceeded"

    def __init__(self, message: str, *, last_error: KeelHTTPError) -> None:
        super().__init__(
            message,
            status=last_error.status,
            problem_type=last_error.problem_type,
            code=self.default_code,
            request_id=last_error.request_id,
            title=last_error.title,
            detail=last_error.detail,
            method=last_error.method,
            url=last_error.url,
        )
        self.last_error = last_error


class ResponseValidationError(KeelHTTPError):
    """The response body did not parse into ``response_model``; ``errors`` has pydantic's list.

    Example::

        except ResponseValidationError as error:
            log.error("billing API changed", errors=error.errors)
    """

    default_code = "invalid_response"

    def __init__(self, message: str, *, errors: list[Any], **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.errors = errors


class SSRFBlockedError(KeelHTTPError):
    """The SSRF policy refused the destination; ``reason`` says which rule matched.

    Example::

        try:
            await fetcher.get(user_supplied_url)
        except SSRFBlockedError as error:
            return JSONResponse({"error": error.reason}, status_code=400)
    """

    default_code = "ssrf_blocked"

    def __init__(self, message: str, *, reason: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.reason = reason


class SignatureVerificationError(KeelHTTPError):
    """Receiving side: a request's RFC 9421 signature is missing, invalid, expired or too narrow.

    The receiving service should answer 401. ``status`` is set to 401 for that reason.

    Example::

        try:
            verifier.verify(method, url, headers, body)
        except SignatureVerificationError as error:
            return problem(401, detail=str(error))
    """

    default_code = "invalid_signature"


def error_for_response(
    response: httpx.Response, *, request_id: str | None, url: str | None
) -> HTTPStatusError:
    """The typed error for an error response, with its RFC 9457 problem parsed when present."""
    problem = parse_problem(response)
    status = response.status_code
    error_class: type[HTTPStatusError] = ServerError if status >= 500 else ClientError
    title = (problem.title if problem else None) or response.reason_phrase or None
    answered_id = (problem.request_id if problem else None) or response.headers.get("x-request-id")
    return error_class(
        f"{response.request.method} {url or ''} answered {status} {title or ''}".strip(),
        response=response,
        problem=problem,
        status=status,
        problem_type=problem.type if problem else None,
        code=problem.code if problem else None,
        request_id=answered_id or request_id,
        title=title,
        detail=problem.detail if problem else None,
        method=response.request.method,
        url=url,
    )
