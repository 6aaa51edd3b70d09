"""The one way an HTTP provider sends a request and turns a failure into a ProviderError.

Every HTTP provider (SES, Postmark, Twilio, FCM, Web Push, Slack) goes through
:class:`ProviderHttp`: it applies the provider's timeout to every request, turns network
errors and timeouts into ``retryable`` failures, and a non-2xx answer into the kind
:func:`kind_for_status` gives, unless the provider's own ``explain`` reads its error body
more precisely. Messages are redacted of every credential the provider holds, and network
errors are raised without their cause: an httpx exception can carry the request URL, and a
Slack webhook URL is a credential.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from keel.notify.providers.base import ErrorKind, ProviderError

#: Longest provider explanation kept in an error message: enough to read, not a whole page.
_MAX_DETAIL = 300


@dataclass(frozen=True)
class Refusal:
    """A provider's own reading of its error answer; ``None`` fields fall back to defaults."""

    kind: ErrorKind | None = None
    code: str | None = None
    detail: str | None = None


Explain = Callable[[httpx.Response], Refusal]


def kind_for_status(status: int) -> ErrorKind:
    """The default kind of an HTTP error status, for providers whose body says nothing
    more. 404/410 mean the addressed thing (a push subscription) is gone; any other 4xx
    means our request or our account is wrong, which another provider may not share."""
    if status == 429:
        return ErrorKind.throttled
    if status in (404, 410):
        return ErrorKind.rejected
    if status in (408, 425) or status >= 500:
        return ErrorKind.retryable
    return ErrorKind.misconfigured


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced, and squeezed onto one line of bounded length."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


def json_body(response: httpx.Response) -> Any:
    """The answer's JSON, or ``None`` when it is not JSON (a proxy's HTML error page)."""
    try:
        return json.loads(response.content)
    except ValueError:
        return None


def retry_after_of(response: httpx.Response) -> float | None:
    # Imported here: the SDK's HTTP package is a quarter second to import and only an error
    # answer needs it.
    from keel_client.http import parse_retry_after

    return parse_retry_after(response.headers.get("retry-after"), now=time.time())


class ProviderHttp:
    """An HTTP client for one provider: the injected shared client, or one of its own."""

    def __init__(
        self,
        provider: str,
        *,
        timeout: float,
        secrets: Iterable[str],
        http: httpx.AsyncClient | None,
    ) -> None:
        self.provider = provider
        self.timeout = httpx.Timeout(timeout)
        self._secrets = tuple(secret for secret in secrets if secret)
        self._owns_client = http is None
        self._http = http or httpx.AsyncClient(timeout=self.timeout)

    def error(
        self,
        message: str,
        kind: ErrorKind,
        *,
        status: int | str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> ProviderError:
        """A ProviderError of this provider, its message redacted."""
        return ProviderError(
            redact(message, self._secrets),
            provider=self.provider,
            kind=kind,
            status=status,
            code=code,
            retry_after=retry_after,
        )

    async def request(
        self,
        method: str,
        url: str,
        *,
        explain: Explain | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        json_content: Any = None,
        form: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request; the 2xx response, or a ProviderError saying what went wrong."""
        try:
            response = await self._http.request(
                method,
                url,
                headers=headers,
                content=content,
                json=json_content,
                data=form,
                auth=auth,
                timeout=self.timeout,
            )
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise self.error(
                f"the provider URL is unusable ({type(exc).__name__})", ErrorKind.misconfigured
            ) from None
        except httpx.TimeoutException as exc:
            raise self.error(f"timed out ({type(exc).__name__})", ErrorKind.retryable) from None
        except httpx.TransportError as exc:
            # ``from None``: the cause's text or request could name the URL (see the module).
            raise self.error(
                f"could not reach the provider ({type(exc).__name__}: {exc})",
                ErrorKind.retryable,
            ) from None
        if response.is_success:
            return response
        refusal = explain(response) if explain else Refusal()
        kind = refusal.kind or kind_for_status(response.status_code)
        detail = f": {refusal.detail}" if refusal.detail else ""
        code = f" {refusal.code}" if refusal.code else ""
        raise self.error(
            f"HTTP {response.status_code}{code}{detail}",
            kind,
            status=response.status_code,
            code=refusal.code,
            retry_after=retry_after_of(response),
        )

    async def aclose(self) -> None:
        if self._owns_client:
            await self._http.aclose()
