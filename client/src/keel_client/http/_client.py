"""The async face of the resilient base client: ``BaseAPIClient``.

Every decision of a call is ``_core.Call``'s; this face sends, sleeps and loops (see ``_core``
for the flow of one call). ``SyncBaseAPIClient`` (``_sync_client``) is the blocking face.
"""

from __future__ import annotations

import ssl
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self, Unpack, overload

import anyio
import httpx
from prometheus_client import CollectorRegistry

from keel_client.http._asyncio_backend import AsyncioHTTPTransport, deadline_scope
from keel_client.http._breaker import BreakerPolicy
from keel_client.http._budget import RetryBudget
from keel_client.http._cache import HTTPCache
from keel_client.http._core import (
    DEFAULT_DEADLINE,
    DEFAULT_LIMITS,
    DEFAULT_TIMEOUT,
    USER_AGENT,
    AsyncHTTPClient,
    ClientCore,
    ClientHealth,
    Headers,
    ModelT,
    Params,
    shared_verify,
)
from keel_client.http._options import RequestOptions
from keel_client.http._retry import RetryPolicy
from keel_client.http._ssrf import SSRFPolicy, SSRFSafeTransport

if TYPE_CHECKING:
    from httpx._client import UseClientDefault

__all__ = ["BaseAPIClient"]


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
        self._core = ClientCore(
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
        if transport is None:
            # httpx's own transport on asyncio's transports rather than anyio's
            # (keel_client.http._asyncio_backend): the same bytes for less CPU and time.
            transport = AsyncioHTTPTransport(
                verify=shared_verify(verify), http2=http2, limits=limits
            )
        if cache is not None:
            transport = cache.async_transport(transport)
        self._http = AsyncHTTPClient(
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
        self._owns_http = True
        self._send_auth: httpx.Auth | UseClientDefault | None = httpx.USE_CLIENT_DEFAULT

    @classmethod
    def _sharing(cls, shared: BaseAPIClient, *, authenticate: bool = True) -> Self:
        """A client of class ``cls`` on ``shared``'s connection pool, breakers, retry budget,
        metrics, defaults and auth (``authenticate=False``: its requests carry only the
        headers its methods set). Closing it closes nothing: ``shared`` owns the pool.

        What ``keel_client.Keel`` builds its sub-clients with; ``cls`` adds no state of its
        own to ``BaseAPIClient``'s (its ``__init__`` does not run)."""
        client = cls.__new__(cls)
        client.base_url = shared.base_url
        client._core = shared._core
        client._http = shared._http
        client._owns_http = False
        client._send_auth = shared._send_auth if authenticate else None
        return client

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
        """Close pooled connections (and the cache storage, if any); nothing for a client
        sharing another's pool."""
        if self._owns_http:
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
                    # httpx timeouts bound each read; this bounds the whole attempt (a body
                    # trickling in byte by byte cannot outlive the deadline).
                    async with deadline_scope(remaining):
                        response = await self._http.send(call.request, auth=self._send_auth)
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
