"""What the two faces of the base client share: ``ClientCore`` (policy and instruments) and
``Call`` (one call's state across its attempts, where every decision of the loop is made).

``BaseAPIClient`` (``_client``) and ``SyncBaseAPIClient`` (``_sync_client``) only send, sleep
and loop. One call runs like this::

    start ── X-Request-ID, Idempotency-Key, budget deposit
      └─▶ attempt ── deadline left? breaker closed? ── send (span, traceparent, timeouts)
            ├─ success ──────────────────────────────────▶ parse response_model, return
            └─ failure ── should_retry? time before the deadline? budget left?
                            ├─ no ──▶ raise the typed error
                            └─ yes ─▶ sleep, attempt again
"""

from __future__ import annotations

import dataclasses
import functools
import ssl
import time
import uuid
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from http.cookiejar import CookieJar
from typing import Any, TypeVar

import httpx
import pydantic
from prometheus_client import CollectorRegistry

from keel_client._version import __version__
from keel_client.http._breaker import (
    BreakerPolicy,
    CircuitBreaker,
    CircuitBreakers,
    CircuitSnapshot,
    CircuitState,
)
from keel_client.http._budget import RetryBudget, RetryBudgetSnapshot
from keel_client.http._exceptions import (
    CircuitOpenError,
    HTTPStatusError,
    KeelHTTPError,
    RequestTimeout,
    ResponseValidationError,
    RetryBudgetExceeded,
    TransportError,
    error_for_response,
)
from keel_client.http._metrics import ClientMetrics
from keel_client.http._options import CallOptions, RequestOptions, resolve_options
from keel_client.http._retry import (
    FailureKind,
    RetryPolicy,
    parse_retry_after,
    should_retry,
    sleep_time,
)
from keel_client.http._ssrf import SSRFPolicy
from keel_client.http._telemetry import Tracing, log_failed_attempt, redact_url

__all__ = [
    "DEFAULT_DEADLINE",
    "DEFAULT_LIMITS",
    "DEFAULT_TIMEOUT",
    "USER_AGENT",
    "AsyncHTTPClient",
    "Call",
    "ClientCore",
    "ClientHealth",
    "HTTPClient",
    "Headers",
    "ModelT",
    "Params",
    "ResponseCookies",
    "shared_verify",
]

ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)
Params = Mapping[str, Any] | list[tuple[str, Any]] | httpx.QueryParams | None
Headers = Mapping[str, str] | httpx.Headers | None

#: Per-attempt timeouts: connecting and waiting for a pooled connection fail fast.
DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=5.0)
#: Per-call deadline, retries and sleeps included.
DEFAULT_DEADLINE = 60.0
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)
USER_AGENT = f"keel-client/{__version__}"
#: Distinct URL strings a client keeps resolved against its base URL (then it starts over).
_URL_CACHE_SIZE = 256


def shared_verify(verify: ssl.SSLContext | bool) -> ssl.SSLContext | bool:
    """``verify=True`` as one TLS context for the whole process: httpx builds a new one for
    each client, loading the CA bundle (about 20 to 40 ms), and a service with many clients (a
    config and a flags client, secrets, audit, one per tenant...) paid it for each, even for
    plain-HTTP URLs. A context or ``False`` passes through."""
    return _default_tls_context() if verify is True else verify


@functools.cache
def _default_tls_context() -> ssl.SSLContext:
    """httpx's own default (certifi's CA bundle, or ``SSL_CERT_FILE``/``SSL_CERT_DIR`` as
    read when the first client of the process is built)."""
    return httpx.create_ssl_context()


@dataclass(frozen=True, slots=True)
class ClientHealth:
    """A client's view of its upstreams: breaker per host and the retry budget.

    Example::

        health = api.health()
        if not health.is_healthy:
            log.warning("billing degraded", circuits=health.circuits)
    """

    circuits: dict[str, CircuitSnapshot]
    retry_budget: RetryBudgetSnapshot

    @property
    def is_healthy(self) -> bool:
        """No upstream host has an open circuit."""
        return all(c.state is not CircuitState.OPEN for c in self.circuits.values())


class ResponseCookies(httpx.Cookies):
    """httpx's cookie jar, read only when a response sets a cookie.

    httpx hands every response to its jar, which builds urllib request and response
    stand-ins (parsing the URL again) to find no ``Set-Cookie`` at all: 10% of a worker's
    time fetching jobs (py-spy). Keel sets no cookies; an API that does still has them kept
    and sent back as before.
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        headers = response.headers
        # The two headers http.cookiejar reads; without them it would store nothing.
        if "set-cookie" in headers or "set-cookie2" in headers:
            super().extract_cookies(response)


CookieTypes = httpx.Cookies | CookieJar | dict[str, str] | list[tuple[str, str]] | None


class _ResponseCookiesJar:
    """Gives an httpx client a ``ResponseCookies`` jar (whatever ``cookies`` is set to)."""

    _response_cookies: ResponseCookies

    @property
    def cookies(self) -> httpx.Cookies:
        return self._response_cookies

    @cookies.setter
    def cookies(self, cookies: CookieTypes) -> None:
        self._response_cookies = ResponseCookies(cookies)


class AsyncHTTPClient(_ResponseCookiesJar, httpx.AsyncClient):
    """The ``httpx.AsyncClient`` of ``BaseAPIClient``: a jar read only when a cookie is set."""

    def __init__(self, *, cookies: CookieTypes = None, **options: Any) -> None:
        super().__init__(**options)
        self.cookies = cookies


class HTTPClient(_ResponseCookiesJar, httpx.Client):
    """The ``httpx.Client`` of ``SyncBaseAPIClient``: a jar read only when a cookie is set."""

    def __init__(self, *, cookies: CookieTypes = None, **options: Any) -> None:
        super().__init__(**options)
        self.cookies = cookies


def _classify(error: BaseException) -> FailureKind | None:
    """The kind of a send failure, or ``None`` for an exception that is not about HTTP."""
    if isinstance(error, httpx.TimeoutException | TimeoutError):
        return FailureKind.TIMEOUT
    if isinstance(error, httpx.ConnectError):
        return FailureKind.CONNECT
    if isinstance(error, httpx.NetworkError | httpx.RemoteProtocolError):
        return FailureKind.CONNECTION
    if isinstance(error, httpx.HTTPError):
        return FailureKind.OTHER
    return None


class ClientCore:
    """Policy and instruments shared by the async and sync faces."""

    def __init__(
        self,
        *,
        name: str,
        timeout: httpx.Timeout | float,
        deadline: float | None,
        retry: RetryPolicy,
        retry_budget: RetryBudget | None,
        breaker: BreakerPolicy | None,
        ssrf: SSRFPolicy | None,
        metrics_registry: CollectorRegistry | None,
        tracer_provider: Any,
    ) -> None:
        self.name = name
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self.deadline = deadline
        self.retry = retry
        self.budget = retry_budget if retry_budget is not None else RetryBudget()
        self.breakers = CircuitBreakers(breaker) if breaker is not None else None
        self.ssrf = ssrf
        # A private registry per client by default: two clients (or two tests) never collide
        # on the process-global registry.
        self.registry = metrics_registry if metrics_registry is not None else CollectorRegistry()
        self.metrics = ClientMetrics(
            self.registry, name, self.breakers or CircuitBreakers(BreakerPolicy())
        )
        self.tracing = Tracing(tracer_provider)
        self._absolute_urls: dict[str, httpx.URL] = {}
        self._absolute_urls_base: httpx.URL | None = None

    def absolute_url(self, http: httpx.AsyncClient | httpx.Client, url: str) -> httpx.URL:
        """``url`` merged with ``http``'s base URL as httpx merges it, parsed once per distinct
        string rather than on every request (a call's paths are mostly constants)."""
        base = http.base_url
        if base is not self._absolute_urls_base:
            self._absolute_urls.clear()
            self._absolute_urls_base = base
        absolute = self._absolute_urls.get(url)
        if absolute is None:
            if len(self._absolute_urls) >= _URL_CACHE_SIZE:
                self._absolute_urls.clear()
            absolute = httpx.URL(url)
            if absolute.is_relative_url:
                # httpx's own merge (``_merge_url``): the path is appended to the base's.
                raw_path = base.raw_path + absolute.raw_path.lstrip(b"/")
                absolute = base.copy_with(raw_path=raw_path)
            self._absolute_urls[url] = absolute
        return absolute

    def start(
        self,
        http: httpx.AsyncClient | httpx.Client,
        method: str,
        url: str | httpx.URL,
        *,
        params: Params,
        json: Any,
        content: bytes | str | None,
        data: Mapping[str, Any] | None,
        headers: Headers,
        options: RequestOptions,
    ) -> Call:
        if self.ssrf is not None and isinstance(url, str) and "://" in url:
            # Before httpx parses it: forms httpx rejects must still be refused *as SSRF*.
            try:
                self.ssrf.check_url(url)
            except KeelHTTPError as error:
                self.metrics.call(method.upper(), "-", error.code, 0.0)
                raise
        if isinstance(url, str):
            url = self.absolute_url(http, url)
        request = http.build_request(
            method, url, params=params, json=json, content=content, data=data, headers=headers
        )
        call_options = resolve_options(
            options,
            timeout=self.timeout,
            deadline=self.deadline,
            max_retries=self.retry.max_retries,
        )
        return Call(self, request, call_options)

    def health(self) -> ClientHealth:
        return ClientHealth(
            circuits=self.breakers.snapshots() if self.breakers is not None else {},
            retry_budget=self.budget.snapshot(),
        )


class Call:
    """One call's state across its attempts. Every policy decision of the loop is here."""

    __slots__ = (
        "_safe_url",
        "breaker",
        "core",
        "deadline_at",
        "host",
        "method",
        "options",
        "policy",
        "request",
        "request_id",
        "retries_done",
        "started",
        "timeouts",
    )

    def __init__(self, core: ClientCore, request: httpx.Request, options: CallOptions) -> None:
        self.core = core
        self.request = request
        self.options = options
        self.method = request.method
        self.started = time.monotonic()
        self.deadline_at = self.started + options.deadline if options.deadline is not None else None
        url = request.url
        self.host = f"{url.host}:{url.port}" if url.port is not None else url.host
        self._safe_url: str | None = None
        headers = request.headers
        # One ID for the whole call, so the upstream's logs tie retries together.
        self.request_id = options.request_id or headers.get("x-request-id") or uuid.uuid4().hex
        headers["X-Request-ID"] = self.request_id
        if options.idempotency_key is not None:
            headers["Idempotency-Key"] = options.idempotency_key
        self.policy = (
            core.retry
            if options.max_retries == core.retry.max_retries
            else dataclasses.replace(core.retry, max_retries=options.max_retries)
        )
        self.timeouts = options.timeout.as_dict()
        self.retries_done = 0
        self.breaker: CircuitBreaker | None = (
            core.breakers.get(self.host) if core.breakers is not None else None
        )
        core.budget.record_request()

    @property
    def safe_url(self) -> str:
        """The URL without credentials or query values; built only when something logs it."""
        if self._safe_url is None:
            self._safe_url = redact_url(self.request.url)
        return self._safe_url

    def remaining(self) -> float | None:
        if self.deadline_at is None:
            return None
        return self.deadline_at - time.monotonic()

    def begin_attempt(self) -> float | None:
        """Check deadline and breaker, set this attempt's timeouts; return the time left."""
        remaining = self.remaining()
        if remaining is not None and remaining <= 0:
            raise self._give_up(self._error(RequestTimeout, "deadline exceeded before attempt"))
        breaker = self.breaker
        if breaker is not None and not breaker.try_acquire():
            retry_after = breaker.retry_after()
            raise self._give_up(
                CircuitOpenError(
                    f"circuit open for {self.host}; next probe in {retry_after:.1f}s",
                    host=self.host,
                    retry_after=retry_after,
                    request_id=self.request_id,
                    method=self.method,
                    url=self.safe_url,
                )
            )
        if remaining is None:
            self.request.extensions["timeout"] = self.timeouts
        else:
            # Each phase may use at most the time left, so no single read outlives the deadline.
            self.request.extensions["timeout"] = {
                phase: remaining if limit is None else min(limit, remaining)
                for phase, limit in self.timeouts.items()
            }
        return remaining

    def span(self) -> AbstractContextManager[Any]:
        return self.core.tracing.attempt(
            self.request,
            safe_url=lambda: self.safe_url,
            attempt=self.retries_done,
            request_id=self.request_id,
        )

    def on_response(self, response: httpx.Response, span: Any) -> float | None:
        """``None`` when the call is done; otherwise the sleep before the next attempt."""
        status = response.status_code
        self.core.tracing.record_status(span, status)
        if self.breaker is not None:
            self.breaker.record(failed=status in self.breaker.policy.failure_statuses)
        self.core.metrics.attempt(self.method, self.host, str(status))
        if status < 400:
            return None
        error = error_for_response(response, request_id=self.request_id, url=self.safe_url)
        retry_after = (
            parse_retry_after(response.headers.get("retry-after"), now=time.time())
            if status in (429, 503)
            else None
        )
        return self._retry_or_raise(error, status=status, failure=None, retry_after=retry_after)

    def on_error(self, error: Exception) -> float:
        """The sleep before the next attempt; raises the typed error when there is none."""
        if isinstance(error, KeelHTTPError):
            # Raised by our own layers (SSRF policy, token endpoint): not the upstream's fault.
            self.abandon()
            self._log(status=error.status, error=error.code, retry_in=None)
            raise self._give_up(error)
        failure = _classify(error)
        if failure is None:
            self.abandon()
            self._record_call("error")
            raise error
        if self.breaker is not None:
            if failure is FailureKind.OTHER or isinstance(error, httpx.PoolTimeout):
                # A redirect loop or our own exhausted pool says nothing about the upstream.
                self.breaker.release()
            else:
                self.breaker.record(failed=True)
        self.core.metrics.attempt(self.method, self.host, failure.value)
        error_class = RequestTimeout if failure is FailureKind.TIMEOUT else TransportError
        if isinstance(error, httpx.HTTPError):
            message = f"{failure.value} failure: {error or type(error).__name__}"
        else:
            message = "deadline exceeded during the attempt"
        typed = self._error(error_class, message)
        typed.__cause__ = error
        return self._retry_or_raise(typed, status=None, failure=failure, retry_after=None)

    def abandon(self) -> None:
        """The attempt ended without an outcome (cancelled): give back a half-open probe."""
        if self.breaker is not None:
            self.breaker.release()

    def finish(
        self, response: httpx.Response, response_model: type[ModelT] | None
    ) -> ModelT | httpx.Response:
        self._record_call(str(response.status_code))
        if response_model is None:
            return response
        try:
            return response_model.model_validate_json(response.content)
        except pydantic.ValidationError as error:
            raise ResponseValidationError(
                f"response did not match {response_model.__name__}",
                errors=error.errors(include_url=False),
                status=response.status_code,
                request_id=self.request_id,
                method=self.method,
                url=self.safe_url,
            ) from error

    def _retry_or_raise(
        self,
        error: KeelHTTPError,
        *,
        status: int | None,
        failure: FailureKind | None,
        retry_after: float | None,
    ) -> float:
        delay = None
        if should_retry(
            self.policy,
            method=self.method,
            retries_done=self.retries_done,
            status=status,
            failure=failure,
            has_idempotency_key=self.options.idempotency_key is not None,
        ):
            delay = sleep_time(
                self.policy,
                retries_done=self.retries_done,
                retry_after=retry_after,
                remaining=self.remaining(),
            )
        if delay is None:
            self._log(status=status, error=error.code, retry_in=None)
            raise self._give_up(error)
        if not self.core.budget.try_spend():
            self.core.metrics.budget_exhausted()
            self._log(status=status, error="retry_budget_exceeded", retry_in=None)
            exceeded = RetryBudgetExceeded(
                f"retry budget spent; not retrying {self.method} {self.safe_url}",
                last_error=error,
            )
            exceeded.__cause__ = error
            raise self._give_up(exceeded)
        self._log(status=status, error=error.code, retry_in=delay)
        self.retries_done += 1
        self.core.metrics.retry(self.host)
        return delay

    def _error(self, error_class: type[KeelHTTPError], message: str) -> KeelHTTPError:
        return error_class(
            f"{self.method} {self.safe_url}: {message}",
            request_id=self.request_id,
            method=self.method,
            url=self.safe_url,
        )

    def _give_up(self, error: KeelHTTPError) -> KeelHTTPError:
        outcome = (
            str(error.status)
            if isinstance(error, HTTPStatusError) and error.status is not None
            else error.code
        )
        self._record_call(outcome)
        return error

    def _record_call(self, outcome: str) -> None:
        self.core.metrics.call(self.method, self.host, outcome, time.monotonic() - self.started)

    def _log(self, *, status: int | None, error: str, retry_in: float | None) -> None:
        log_failed_attempt(
            method=self.method,
            safe_url=self.safe_url,
            attempt=self.retries_done,
            request_id=self.request_id,
            status=status,
            error=error,
            retry_in=retry_in,
        )
