"""The resilient base client: ``BaseAPIClient`` (async) and ``SyncBaseAPIClient``.

Both faces share every decision through ``_ClientCore`` and ``_Call``; a face only sends, sleeps
and loops. One call runs like this::

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
import types
import uuid
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Self, TypeVar, Unpack, overload

import anyio
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
from keel_client.http._cache import HTTPCache
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
from keel_client.http._ssrf import SSRFPolicy, SSRFSafeTransport, SyncSSRFSafeTransport
from keel_client.http._telemetry import Tracing, log_failed_attempt, redact_url

__all__ = ["BaseAPIClient", "ClientHealth", "SyncBaseAPIClient"]

ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)
Params = Mapping[str, Any] | list[tuple[str, Any]] | httpx.QueryParams | None
Headers = Mapping[str, str] | httpx.Headers | None

#: Per-attempt timeouts: connecting and waiting for a pooled connection fail fast.
DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=5.0)
#: Per-call deadline, retries and sleeps included.
DEFAULT_DEADLINE = 60.0
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)
USER_AGENT = f"keel-client/{__version__}"


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


class _ClientCore:
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
    ) -> _Call:
        if self.ssrf is not None and isinstance(url, str) and "://" in url:
            # Before httpx parses it: forms httpx rejects must still be refused *as SSRF*.
            try:
                self.ssrf.check_url(url)
            except KeelHTTPError as error:
                self.metrics.call(method.upper(), "-", error.code, 0.0)
                raise
        request = http.build_request(
            method, url, params=params, json=json, content=content, data=data, headers=headers
        )
        call_options = resolve_options(
            options,
            timeout=self.timeout,
            deadline=self.deadline,
            max_retries=self.retry.max_retries,
        )
        return _Call(self, request, call_options)

    def health(self) -> ClientHealth:
        return ClientHealth(
            circuits=self.breakers.snapshots() if self.breakers is not None else {},
            retry_budget=self.budget.snapshot(),
        )


class _Call:
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

    def __init__(self, core: _ClientCore, request: httpx.Request, options: CallOptions) -> None:
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


class BaseAPIClient:
    """The async base client for an HTTP API: subclass it, set ``base_url``, add methods.

    Timeouts per attempt and a deadline per call; retries with full-jitter backoff that honour
    ``Retry-After`` and a retry budget; a circuit breaker per upstream host; optional RFC 9111
    caching, auth and SSRF protection; request IDs, traceparent, spans, metrics and logs.
    Defaults: ``DEFAULT_TIMEOUT`` (connect 5 s, read 30 s, write 30 s, pool 5 s), a 60 s
    deadline, ``RetryPolicy()``, ``RetryBudget()``, ``BreakerPolicy()``; no cache, no SSRF
    policy, HTTP/1.1 (``http2=True`` to negotiate HTTP/2), redirects not followed.

    Example::

        class BillingAPI(BaseAPIClient):
            base_url = "https://billing.internal"

            async def invoice(self, id: str) -> Invoice:
                return await self.get(f"/invoices/{id}", response_model=Invoice)

        async with BillingAPI(auth=BearerToken(token)) as billing:
            invoice = await billing.invoice("42")
            await billing.post("/refunds", json=refund, idempotent=True, deadline=5.0)
    """

    #: The API's root; a subclass sets it, or pass ``base_url=`` to the constructor.
    base_url: str = ""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        auth: httpx.Auth | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        deadline: float | None = DEFAULT_DEADLINE,
        retry: RetryPolicy = RetryPolicy(),
        retry_budget: RetryBudget | None = None,
        breaker: BreakerPolicy | None = BreakerPolicy(),
        cache: HTTPCache | None = None,
        ssrf: SSRFPolicy | None = None,
        http2: bool = False,
        limits: httpx.Limits = DEFAULT_LIMITS,
        verify: ssl.SSLContext | bool = True,
        follow_redirects: bool = False,
        metrics_registry: CollectorRegistry | None = None,
        name: str | None = None,
        tracer_provider: Any = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if base_url is not None:
            self.base_url = base_url
        self._core = _ClientCore(
            name=name or type(self).__name__,
            timeout=timeout,
            deadline=deadline,
            retry=retry,
            retry_budget=retry_budget,
            breaker=breaker,
            ssrf=ssrf,
            metrics_registry=metrics_registry,
            tracer_provider=tracer_provider,
        )
        if transport is None and ssrf is not None:
            transport = SSRFSafeTransport(
                ssrf, verify=shared_verify(verify), http2=http2, limits=limits
            )
        if cache is not None:
            transport = cache.async_transport(
                transport
                or httpx.AsyncHTTPTransport(
                    verify=shared_verify(verify), http2=http2, limits=limits
                )
            )
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            auth=auth,
            headers={"User-Agent": USER_AGENT, **(headers or {})},
            timeout=self._core.timeout,
            http2=http2,
            limits=limits,
            verify=shared_verify(verify),
            # The SSRF transport follows redirects itself, checking every hop.
            follow_redirects=follow_redirects and ssrf is None,
            transport=transport,
        )

    @property
    def metrics_registry(self) -> CollectorRegistry:
        """The Prometheus registry this client's metrics are on."""
        return self._core.registry

    def health(self) -> ClientHealth:
        """Breaker state per upstream host and the retry budget, for readiness checks."""
        return self._core.health()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close pooled connections (and the cache storage, if any)."""
        await self._http.aclose()

    @overload
    async def request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        params: Params = None,
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        headers: Headers = None,
        response_model: None = None,
        **options: Unpack[RequestOptions],
    ) -> httpx.Response: ...

    @overload
    async def request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        params: Params = None,
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        headers: Headers = None,
        response_model: type[ModelT],
        **options: Unpack[RequestOptions],
    ) -> ModelT: ...

    async def request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        params: Params = None,
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        headers: Headers = None,
        response_model: type[ModelT] | None = None,
        **options: Unpack[RequestOptions],
    ) -> ModelT | httpx.Response:
        """Send a request with the client's policies; return the model or the response.

        Raises a ``KeelHTTPError`` subclass for every failure (see ``_exceptions``).
        """
        return await self._request(
            method,
            url,
            params=params,
            json=json,
            content=content,
            data=data,
            headers=headers,
            response_model=response_model,
            **options,
        )

    async def _request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        params: Params = None,
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        headers: Headers = None,
        response_model: type[ModelT] | None = None,
        **options: Unpack[RequestOptions],
    ) -> ModelT | httpx.Response:
        call = self._core.start(
            self._http,
            method,
            url,
            params=params,
            json=json,
            content=content,
            data=data,
            headers=headers,
            options=options,
        )
        while True:
            remaining = call.begin_attempt()
            with call.span() as span:
                try:
                    if remaining is None:
                        response = await self._http.send(call.request)
                    else:
                        # httpx timeouts bound each read; this bounds the whole attempt
                        # (a body trickling in byte by byte cannot outlive the deadline).
                        with anyio.fail_after(remaining):
                            response = await self._http.send(call.request)
                except Exception as error:
                    delay = call.on_error(error)
                except BaseException:
                    call.abandon()
                    raise
                else:
                    next_delay = call.on_response(response, span)
                    if next_delay is None:
                        return call.finish(response, response_model)
                    delay = next_delay
            await anyio.sleep(delay)

    @overload
    async def get(
        self,
        url: str | httpx.URL,
        *,
        params: Params = None,
        headers: Headers = None,
        response_model: None = None,
        **options: Unpack[RequestOptions],
    ) -> httpx.Response: ...

    @overload
    async def get(
        self,
        url: str | httpx.URL,
        *,
        params: Params = None,
        headers: Headers = None,
        response_model: type[ModelT],
        **options: Unpack[RequestOptions],
    ) -> ModelT: ...

    async def get(
        self,
        url: str | httpx.URL,
        *,
        params: Params = None,
        headers: Headers = None,
        response_model: type[ModelT] | None = None,
        **options: Unpack[RequestOptions],
    ) -> ModelT | httpx.Response:
        """``GET url``; see ``request``."""
        return await self._request(
            "GET", url, params=params, headers=headers, response_model=response_model, **options
        )

    @overload
    async def delete(
        self,
        url: str | httpx.URL,
        *,
        params: Params = None,
        headers: Headers = None,
        response_model: None = None,
        **options: Unpack[RequestOptions],
    ) -> httpx.Response: ...

    @overload
    async def delete(
        self,
        url: str | httpx.URL,
        *,
        params: Params = None,
        headers: Headers = None,
        response_model: type[ModelT],
        **options: Unpack[RequestOptions],
    ) -> ModelT: ...

    async def delete(
        self,
        url: str | httpx.URL,
        *,
        params: Params = None,
        headers: Headers = None,
        response_model: type[ModelT] | None = None,
        **options: Unpack[RequestOptions],
    ) -> ModelT | httpx.Response:
        """``DELETE url``; see ``request``."""
        return await self._request(
            "DELETE", url, params=params, headers=headers, response_model=response_model, **options
        )

    @overload
    async def post(
        self,
        url: str | httpx.URL,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        params: Params = None,
        headers: Headers = None,
        response_model: None = None,
        **options: Unpack[RequestOptions],
    ) -> httpx.Response: ...

    @overload
    async def post(
        self,
        url: str | httpx.URL,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        params: Params = None,
        headers: Headers = None,
        response_model: type[ModelT],
        **options: Unpack[RequestOptions],
    ) -> ModelT: ...

    async def post(
        self,
        url: str | httpx.URL,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        params: Params = None,
        headers: Headers = None,
        response_model: type[ModelT] | None = None,
        **options: Unpack[RequestOptions],
    ) -> ModelT | httpx.Response:
        """``POST url``; retried only with ``idempotent=True`` or an ``idempotency_key``."""
        return await self._request(
            "POST",
            url,
            json=json,
            content=content,
            data=data,
            params=params,
            headers=headers,
            response_model=response_model,
            **options,
        )

    @overload
    async def put(
        self,
        url: str | httpx.URL,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        params: Params = None,
        headers: Headers = None,
        response_model: None = None,
        **options: Unpack[RequestOptions],
    ) -> httpx.Response: ...

    @overload
    async def put(
        self,
        url: str | httpx.URL,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        params: Params = None,
        headers: Headers = None,
        response_model: type[ModelT],
        **options: Unpack[RequestOptions],
    ) -> ModelT: ...

    async def put(
        self,
        url: str | httpx.URL,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        params: Params = None,
        headers: Headers = None,
        response_model: type[ModelT] | None = None,
        **options: Unpack[RequestOptions],
    ) -> ModelT | httpx.Response:
        """``PUT url``; see ``request``."""
        return await self._request(
            "PUT",
            url,
            json=json,
            content=content,
            data=data,
            params=params,
            headers=headers,
            response_model=response_model,
            **options,
        )

    @overload
    async def patch(
        self,
        url: str | httpx.URL,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        params: Params = None,
        headers: Headers = None,
        response_model: None = None,
        **options: Unpack[RequestOptions],
    ) -> httpx.Response: ...

    @overload
    async def patch(
        self,
        url: str | httpx.URL,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        params: Params = None,
        headers: Headers = None,
        response_model: type[ModelT],
        **options: Unpack[RequestOptions],
    ) -> ModelT: ...

    async def patch(
        self,
        url: str | httpx.URL,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        params: Params = None,
        headers: Headers = None,
        response_model: type[ModelT] | None = None,
        **options: Unpack[RequestOptions],
    ) -> ModelT | httpx.Response:
        """``PATCH url``; retried only with ``idempotent=True`` or an ``idempotency_key``."""
        return await self._request(
            "PATCH",
            url,
            json=json,
            content=content,
            data=data,
            params=params,
            headers=headers,
            response_model=response_model,
            **options,
        )


class SyncBaseAPIClient:
    """The blocking face of ``BaseAPIClient``: same options, same policies, same errors.

    The deadline bounds every connect/read/write (each gets at most the time left) and every
    retry; unlike the async face it cannot interrupt a single read mid-way, so a body trickling
    in may overrun the deadline by up to one read timeout.

    Example::

        class BillingAPI(SyncBaseAPIClient):
            base_url = "https://billing.internal"

            def invoice(self, id: str) -> Invoice:
                return self.get(f"/invoices/{id}", response_model=Invoice)

        with BillingAPI() as billing:
            billing.invoice("42")
    """

    base_url: str = ""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        auth: httpx.Auth | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        deadline: float | None = DEFAULT_DEADLINE,
        retry: RetryPolicy = RetryPolicy(),
        retry_budget: RetryBudget | None = None,
        breaker: BreakerPolicy | None = BreakerPolicy(),
        cache: HTTPCache | None = None,
        ssrf: SSRFPolicy | None = None,
        http2: bool = False,
        limits: httpx.Limits = DEFAULT_LIMITS,
        verify: ssl.SSLContext | bool = True,
        follow_redirects: bool = False,
        metrics_registry: CollectorRegistry | None = None,
        name: str | None = None,
        tracer_provider: Any = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if base_url is not None:
            self.base_url = base_url
        self._core = _ClientCore(
            name=name or type(self).__name__,
            timeout=timeout,
            deadline=deadline,
            retry=retry,
            retry_budget=retry_budget,
            breaker=breaker,
            ssrf=ssrf,
            metrics_registry=metrics_registry,
            tracer_provider=tracer_provider,
        )
        if transport is None and ssrf is not None:
            transport = SyncSSRFSafeTransport(
                ssrf, verify=shared_verify(verify), http2=http2, limits=limits
            )
        if cache is not None:
            transport = cache.sync_transport(
                transport
                or httpx.HTTPTransport(verify=shared_verify(verify), http2=http2, limits=limits)
            )
        self._http = httpx.Client(
            base_url=self.base_url,
            auth=auth,
            headers={"User-Agent": USER_AGENT, **(headers or {})},
            timeout=self._core.timeout,
            http2=http2,
            limits=limits,
            verify=shared_verify(verify),
            follow_redirects=follow_redirects and ssrf is None,
            transport=transport,
        )

    @property
    def metrics_registry(self) -> CollectorRegistry:
        """The Prometheus registry this client's metrics are on."""
        return self._core.registry

    def health(self) -> ClientHealth:
        """Breaker state per upstream host and the retry budget, for readiness checks."""
        return self._core.health()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close pooled connections (and the cache storage, if any)."""
        self._http.close()

    @overload
    def request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        params: Params = None,
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        headers: Headers = None,
        response_model: None = None,
        **options: Unpack[RequestOptions],
    ) -> httpx.Response: ...

    @overload
    def request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        params: Params = None,
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        headers: Headers = None,
        response_model: type[ModelT],
        **options: Unpack[RequestOptions],
    ) -> ModelT: ...

    def request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        params: Params = None,
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        headers: Headers = None,
        response_model: type[ModelT] | None = None,
        **options: Unpack[RequestOptions],
    ) -> ModelT | httpx.Response:
        """Send a request with the client's policies; return the model or the response."""
        return self._request(
            method,
            url,
            params=params,
            json=json,
            content=content,
            data=data,
            headers=headers,
            response_model=response_model,
            **options,
        )

    def _request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        params: Params = None,
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        headers: Headers = None,
        response_model: type[ModelT] | None = None,
        **options: Unpack[RequestOptions],
    ) -> ModelT | httpx.Response:
        call = self._core.start(
            self._http,
            method,
            url,
            params=params,
            json=json,
            content=content,
            data=data,
            headers=headers,
            options=options,
        )
        while True:
            call.begin_attempt()
            with call.span() as span:
                try:
                    response = self._http.send(call.request)
                except Exception as error:
                    delay = call.on_error(error)
                except BaseException:
                    call.abandon()
                    raise
                else:
                    next_delay = call.on_response(response, span)
                    if next_delay is None:
                        return call.finish(response, response_model)
                    delay = next_delay
            time.sleep(delay)

    @overload
    def get(
        self,
        url: str | httpx.URL,
        *,
        params: Params = None,
        headers: Headers = None,
        response_model: None = None,
        **options: Unpack[RequestOptions],
    ) -> httpx.Response: ...

    @overload
    def get(
        self,
        url: str | httpx.URL,
        *,
        params: Params = None,
        headers: Headers = None,
        response_model: type[ModelT],
        **options: Unpack[RequestOptions],
    ) -> ModelT: ...

    def get(
        self,
        url: str | httpx.URL,
        *,
        params: Params = None,
        headers: Headers = None,
        response_model: type[ModelT] | None = None,
        **options: Unpack[RequestOptions],
    ) -> ModelT | httpx.Response:
        """``GET url``; see ``request``."""
        return self._request(
            "GET", url, params=params, headers=headers, response_model=response_model, **options
        )

    @overload
    def delete(
        self,
        url: str | httpx.URL,
        *,
        params: Params = None,
        headers: Headers = None,
        response_model: None = None,
        **options: Unpack[RequestOptions],
    ) -> httpx.Response: ...

    @overload
    def delete(
        self,
        url: str | httpx.URL,
        *,
        params: Params = None,
        headers: Headers = None,
        response_model: type[ModelT],
        **options: Unpack[RequestOptions],
    ) -> ModelT: ...

    def delete(
        self,
        url: str | httpx.URL,
        *,
        params: Params = None,
        headers: Headers = None,
        response_model: type[ModelT] | None = None,
        **options: Unpack[RequestOptions],
    ) -> ModelT | httpx.Response:
        """``DELETE url``; see ``request``."""
        return self._request(
            "DELETE", url, params=params, headers=headers, response_model=response_model, **options
        )

    @overload
    def post(
        self,
        url: str | httpx.URL,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        params: Params = None,
        headers: Headers = None,
        response_model: None = None,
        **options: Unpack[RequestOptions],
    ) -> httpx.Response: ...

    @overload
    def post(
        self,
        url: str | httpx.URL,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        params: Params = None,
        headers: Headers = None,
        response_model: type[ModelT],
        **options: Unpack[RequestOptions],
    ) -> ModelT: ...

    def post(
        self,
        url: str | httpx.URL,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        params: Params = None,
        headers: Headers = None,
        response_model: type[ModelT] | None = None,
        **options: Unpack[RequestOptions],
    ) -> ModelT | httpx.Response:
        """``POST url``; retried only with ``idempotent=True`` or an ``idempotency_key``."""
        return self._request(
            "POST",
            url,
            json=json,
            content=content,
            data=data,
            params=params,
            headers=headers,
            response_model=response_model,
            **options,
        )

    @overload
    def put(
        self,
        url: str | httpx.URL,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        params: Params = None,
        headers: Headers = None,
        response_model: None = None,
        **options: Unpack[RequestOptions],
    ) -> httpx.Response: ...

    @overload
    def put(
        self,
        url: str | httpx.URL,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        params: Params = None,
        headers: Headers = None,
        response_model: type[ModelT],
        **options: Unpack[RequestOptions],
    ) -> ModelT: ...

    def put(
        self,
        url: str | httpx.URL,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        params: Params = None,
        headers: Headers = None,
        response_model: type[ModelT] | None = None,
        **options: Unpack[RequestOptions],
    ) -> ModelT | httpx.Response:
        """``PUT url``; see ``request``."""
        return self._request(
            "PUT",
            url,
            json=json,
            content=content,
            data=data,
            params=params,
            headers=headers,
            response_model=response_model,
            **options,
        )

    @overload
    def patch(
        self,
        url: str | httpx.URL,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        params: Params = None,
        headers: Headers = None,
        response_model: None = None,
        **options: Unpack[RequestOptions],
    ) -> httpx.Response: ...

    @overload
    def patch(
        self,
        url: str | httpx.URL,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        params: Params = None,
        headers: Headers = None,
        response_model: type[ModelT],
        **options: Unpack[RequestOptions],
    ) -> ModelT: ...

    def patch(
        self,
        url: str | httpx.URL,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        params: Params = None,
        headers: Headers = None,
        response_model: type[ModelT] | None = None,
        **options: Unpack[RequestOptions],
    ) -> ModelT | httpx.Response:
        """``PATCH url``; retried only with ``idempotent=True`` or an ``idempotency_key``."""
        return self._request(
            "PATCH",
            url,
            json=json,
            content=content,
            data=data,
            params=params,
            headers=headers,
            response_model=response_model,
            **options,
        )
