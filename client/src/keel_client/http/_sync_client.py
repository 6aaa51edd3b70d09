"""The blocking face of the resilient base client: ``SyncBaseAPIClient``.

The same ``_core.Call`` decides every step; this face sends, sleeps and loops on the calling
thread.
"""

from __future__ import annotations

import ssl
import time
import types
from collections.abc import Mapping
from typing import Any, Self, Unpack, overload

import httpx
from prometheus_client import CollectorRegistry

from keel_client.http._breaker import BreakerPolicy
from keel_client.http._budget import RetryBudget
from keel_client.http._cache import HTTPCache
from keel_client.http._core import (
    DEFAULT_DEADLINE,
    DEFAULT_LIMITS,
    DEFAULT_TIMEOUT,
    USER_AGENT,
    ClientCore,
    ClientHealth,
    Headers,
    HTTPClient,
    ModelT,
    Params,
    shared_verify,
)
from keel_client.http._options import RequestOptions
from keel_client.http._retry import RetryPolicy
from keel_client.http._ssrf import SSRFPolicy, SyncSSRFSafeTransport

__all__ = ["SyncBaseAPIClient"]


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
            transport = SyncSSRFSafeTransport(
                ssrf, verify=shared_verify(verify), http2=http2, limits=limits
            )
        if cache is not None:
            transport = cache.sync_transport(
                transport
                or httpx.HTTPTransport(verify=shared_verify(verify), http2=http2, limits=limits)
            )
        self._http = HTTPClient(
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
