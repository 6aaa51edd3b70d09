"""Follow a Keel change stream (Server-Sent Events) with automatic reconnect and resume.

Keel publishes what changed (a secret's new version, a flag, a config key) on change streams
such as ``/secrets/v1/sys/changes``. :func:`watch_changes` yields each change once, in order;
when the connection drops it reconnects with ``Last-Event-ID`` and the server replays what
was missed. When the server no longer keeps the resume point, it yields a change with
``is_reset`` set: reload everything you cached.

Example::

    async with BaseAPIClient("https://keel.internal", auth=APIKey(key)) as keel:
        async for change in watch_changes(keel, "/secrets/v1/sys/changes"):
            if change.is_reset:
                cache.clear()
            else:
                cache.pop(change.subject, None)

The SSE parsing follows the WHATWG HTML standard ("Server-sent events", section 9.2.6):
multi-line ``data``, comments, ``id`` (kept across events), ``event`` and ``retry``.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx

from keel_client.http._client import BaseAPIClient
from keel_client.http._exceptions import error_for_response
from keel_client.http._retry import DEFAULT_RETRY_STATUSES, backoff

__all__ = ["Change", "SSEDecoder", "ServerSentEvent", "watch_changes"]

#: Three missed heartbeats (the server sends one every 15 s) mean the connection is dead.
DEFAULT_READ_TIMEOUT = 45.0
#: The reconnection delay until the server names one (``retry:``), in seconds.
DEFAULT_RECONNECT_DELAY = 1.0
MAX_RECONNECT_DELAY = 30.0


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event: its type (``message`` when unnamed), data and last event id."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    #: The reconnection time the stream asked for, in milliseconds, if it did.
    retry: int | None = None

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass(slots=True)
class SSEDecoder:
    """Turns the lines of an event stream into :class:`ServerSentEvent` objects.

    Feed it every line, without its line ending (an empty line ends an event)::

        decoder = SSEDecoder()
        for line in lines:
            if (event := decoder.decode(line)) is not None:
                handle(event)
    """

    last_event_id: str | None = None
    retry: int | None = None
    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _started: bool = False

    def decode(self, line: str) -> ServerSentEvent | None:
        if not self._started:
            self._started = True
            line = line.removeprefix("\ufeff")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment (the server's heartbeat)
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        event, data = self._event, self._data
        self._event, self._data = "", []
        if not data:
            return None
        return ServerSentEvent(event or "message", "\n".join(data), self.last_event_id, self.retry)


@dataclass(frozen=True, slots=True)
class Change:
    """One change of a stream, or a reset (``is_reset``: reload everything).

    ``subject`` names what changed (for secrets ``<mount>/<path>``); ``data`` says how (for
    secrets ``{"version": 3, "operation": "write"}``), never with a secret value.
    """

    id: int
    stream: str
    subject: str
    data: dict[str, Any]
    is_reset: bool = False
    #: The stream starts from now at ``id`` (a connection without a resume point): every
    #: change after this point follows. Yielded only by ``watch_changes(yield_ready=True)``.
    is_ready: bool = False


def _http_client(client: BaseAPIClient | httpx.AsyncClient) -> httpx.AsyncClient:
    if isinstance(client, httpx.AsyncClient):
        return client
    # The base client's own httpx client: its base URL, auth, headers and transport. Its
    # call loop is not used: a stream is one long response, reconnected here.
    return client._http


async def watch_changes(
    client: BaseAPIClient | httpx.AsyncClient,
    path: str,
    *,
    last_event_id: int | None = None,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    max_reconnect_delay: float = MAX_RECONNECT_DELAY,
    random_fraction: Callable[[], float] = random.random,
    yield_ready: bool = False,
) -> AsyncIterator[Change]:
    """Yield the changes of the stream at ``path``, reconnecting for ever.

    ``last_event_id`` resumes after that change (a persisted ``Change.id``); without it the
    stream starts now. Dropped connections, timeouts, 429 and 502/503/504 answers are
    retried with jittered backoff from the server's ``retry:`` delay up to
    ``max_reconnect_delay``; any other error status raises the ``keel_client.http`` error
    (``ClientError`` for a 401 or 403, say) and ends the iteration.

    With ``yield_ready`` the ``ready`` event that opens a stream started from now is yielded
    too (``is_ready``): a snapshot read after it misses no change, so a client that keeps one
    loads it then, without a gap between its read and the stream.
    """
    http = _http_client(client)
    position = last_event_id
    failures = 0
    delay = DEFAULT_RECONNECT_DELAY
    timeout = httpx.Timeout(10.0, read=read_timeout)
    while True:
        request_headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        request_headers.update(headers or {})
        if position is not None:
            request_headers["Last-Event-ID"] = str(position)
        try:
            async with http.stream(
                "GET", path, params=params, headers=request_headers, timeout=timeout
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    if response.status_code not in DEFAULT_RETRY_STATUSES:
                        raise error_for_response(response, request_id=None, url=path)
                else:
                    failures = 0
                    decoder = SSEDecoder()
                    async for line in response.aiter_lines():
                        event = decoder.decode(line)
                        if decoder.retry is not None:
                            delay = decoder.retry / 1000
                        if event is None:
                            continue
                        change = _change_of(event, yield_ready=yield_ready)
                        if event.id is not None and event.id.isdigit():
                            position = int(event.id)
                        if change is not None:
                            yield change
        except (httpx.TransportError, httpx.TimeoutException):
            pass  # reconnect below
        failures += 1
        await anyio.sleep(
            min(max_reconnect_delay, delay)
            + backoff(failures - 1, base=delay, cap=max_reconnect_delay, random=random_fraction)
        )


def _change_of(event: ServerSentEvent, *, yield_ready: bool = False) -> Change | None:
    """The change an event carries; ``None`` for the stream's own events (``ready``...)."""
    if event.id is None or not event.id.isdigit():
        return None
    if event.event == "reset":
        return Change(int(event.id), "", "", {}, is_reset=True)
    if event.event == "ready" and yield_ready:
        return Change(int(event.id), "", "", {}, is_ready=True)
    if event.event in ("ready", "closed", "message"):
        return None
    try:
        body = event.json()
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
        return None
    return Change(
        int(event.id),
        str(body.get("stream", event.event)),
        str(body.get("subject", "")),
        body["data"],
    )
