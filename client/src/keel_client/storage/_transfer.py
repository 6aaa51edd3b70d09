"""Streamed requests and responses through the shared base client's policies.

``BaseAPIClient`` sends bodies it holds and reads whole answers; an object is neither. This
runs the same call loop (``keel_client.http._core.Call``: request ID, breaker, retries with
backoff and budget, metrics, typed errors) on the base client's own pool and credential,
with a body made afresh for each attempt (``body()``) and, for a download, the answer left
open for the caller to read in chunks::

    stream_call ── Call.begin_attempt ── send(body(), stream=True)
        ├─ < 400 ──▶ the open response (the caller reads and closes it)
        └─ error ──▶ read the small problem body, Call decides: retry (a fresh body) or raise

A body that cannot be read twice (a stream) is sent once: its call is given no retries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Unpack

import anyio
import httpx

from keel_client.http import BaseAPIClient, RequestOptions
from keel_client.http._core import Headers, Params

__all__ = ["stream_call"]


async def stream_call(
    api: BaseAPIClient,
    method: str,
    url: str,
    *,
    body: Callable[[], AsyncIterator[bytes]] | None = None,
    can_retry: bool = True,
    params: Params = None,
    headers: Headers = None,
    **options: Unpack[RequestOptions],
) -> httpx.Response:
    """Send ``method url`` with ``body()`` streamed; answer the response still open (a
    success), or raise the base client's typed error. The caller closes the response."""
    if not can_retry:
        options["max_retries"] = 0
    core, http = api._core, api._http
    call = core.start(
        http, method, url, params=params, json=None, content=None, data=None,
        headers=headers, options=options,
    )  # fmt: skip
    while True:
        remaining = call.begin_attempt()
        if body is not None:
            call.request = httpx.Request(
                method,
                call.request.url,
                headers=call.request.headers,
                content=body(),
                extensions=call.request.extensions,
            )
        with call.span() as span:
            try:
                if remaining is None:
                    response = await http.send(call.request, auth=api._send_auth, stream=True)
                else:
                    with anyio.fail_after(remaining):
                        response = await http.send(call.request, auth=api._send_auth, stream=True)
                if response.status_code >= 400:
                    try:
                        await response.aread()  # the problem document: small
                    finally:
                        await response.aclose()
            except Exception as error:
                delay = call.on_error(error)
            except BaseException:
                call.abandon()
                raise
            else:
                try:
                    next_delay = call.on_response(response, span)
                except BaseException:
                    await response.aclose()
                    raise
                if next_delay is None:
                    call.finish(response, None)
                    return response
                delay = next_delay
        await anyio.sleep(delay)
