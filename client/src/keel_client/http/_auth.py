"""Pluggable authentication: ``httpx.Auth`` classes, so they also work in a bare httpx client.

- ``BearerToken`` and ``APIKey``: a static credential in a header.
- ``ClientCredentials``: OAuth 2.0 client credentials (RFC 6749 section 4.4), refreshed before
  the token expires, with one token request however many calls need a token at once.
- ``HTTPSignatureAuth`` (in ``_signatures``): RFC 9421 request signing.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass
from urllib.parse import quote_plus

import anyio
import httpx
from pydantic import SecretStr

from keel_client.http._exceptions import KeelHTTPError, error_for_response

__all__ = ["APIKey", "BearerToken", "ClientCredentials"]


def _secret(value: str | SecretStr) -> SecretStr:
    return value if isinstance(value, SecretStr) else SecretStr(value)


class BearerToken(httpx.Auth):
    """Sends ``Authorization: Bearer <token>`` with every request.

    Example::

        api = BillingAPI(auth=BearerToken(settings.billing_token))
    """

    def __init__(self, token: str | SecretStr) -> None:
        self._token = _secret(token)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
        yield request


class APIKey(httpx.Auth):
    """Sends an API key in a header (``X-API-Key`` unless told otherwise).

    Example::

        api = WeatherAPI(auth=APIKey(settings.weather_key, header="X-Api-Token"))
    """

    def __init__(self, key: str | SecretStr, *, header: str = "X-API-Key") -> None:
        self._key = _secret(key)
        self._header = header

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers[self._header] = self._key.get_secret_value()
        yield request


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    refresh_at: float


class ClientCredentials(httpx.Auth):
    """OAuth 2.0 client-credentials auth with proactive, single-flight refresh.

    The token is fetched on first use and fetched again ``refresh_margin`` seconds before it
    expires (at most half its lifetime early), so no call waits on an expired token. When many
    calls find the token stale together, one of them fetches it and the others wait for that
    one: 100 concurrent calls make exactly one token request. A 401 drops the token and retries
    the request once with a fresh one (the upstream may have revoked it).

    The client authenticates with HTTP Basic (``client_secret_basic``) unless
    ``send_credentials_in_body=True`` (``client_secret_post``).

    Example::

        auth = ClientCredentials(
            "https://auth.internal/oauth/token", client_id="billing", client_secret=secret,
            scope="invoices:read",
        )
        api = BillingAPI(auth=auth)
    """

    def __init__(
        self,
        token_url: str,
        *,
        client_id: str,
        client_secret: str | SecretStr,
        scope: str | None = None,
        audience: str | None = None,
        send_credentials_in_body: bool = False,
        refresh_margin: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = _secret(client_secret)
        self.scope = scope
        self.audience = audience
        self.send_credentials_in_body = send_credentials_in_body
        self.refresh_margin = refresh_margin
        self._clock = clock
        self._token: _Token | None = None
        self._async_lock = anyio.Lock()
        self._sync_lock = threading.Lock()
        #: How many token requests this auth has made (for health checks and tests).
        self.token_requests = 0

    def _fresh_token(self) -> str | None:
        token = self._token
        if token is None or self._clock() >= token.refresh_at:
            return None
        return token.value

    def _token_request(self, for_request: httpx.Request) -> httpx.Request:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        if self.audience:
            form["audience"] = self.audience
        secret = self._client_secret.get_secret_value()
        headers = {"Accept": "application/json"}
        if self.send_credentials_in_body:
            form.update(client_id=self.client_id, client_secret=secret)
        else:
            # RFC 6749 section 2.3.1: form-encode both parts before Basic-encoding them.
            pair = f"{quote_plus(self.client_id)}:{quote_plus(secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        self.token_requests += 1
        # The token request inherits the call's timeouts (httpx reads them from extensions).
        extensions = {"timeout": for_request.extensions.get("timeout", {})}
        return httpx.Request(
            "POST", self.token_url, data=form, headers=headers, extensions=extensions
        )

    def _store(self, response: httpx.Response) -> str:
        if response.status_code != 200:
            raise error_for_response(response, request_id=None, url=self.token_url)
        try:
            body = response.json()
            value = str(body["access_token"])
            lifetime = float(body.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError) as error:
            raise KeelHTTPError(
                "token endpoint answered without an access_token",
                status=response.status_code,
                code="invalid_token_response",
                url=self.token_url,
            ) from error
        margin = min(self.refresh_margin, lifetime / 2)
        self._token = _Token(value=value, refresh_at=self._clock() + lifetime - margin)
        return value

    def _invalidate(self, value: str) -> None:
        # Only the token that was refused: another call may already have fetched a new one.
        token = self._token
        if token is not None and token.value == value:
            self._token = None

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        for attempt in range(2):
            value = self._fresh_token()
            if value is None:
                with self._sync_lock:
                    value = self._fresh_token()
                    if value is None:
                        token_response = yield self._token_request(request)
                        token_response.read()
                        value = self._store(token_response)
            request.headers["Authorization"] = f"Bearer {value}"
            response = yield request
            if response.status_code != 401 or attempt == 1:
                return
            self._invalidate(value)

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        for attempt in range(2):
            value = self._fresh_token()
            if value is None:
                async with self._async_lock:
                    # Checked again under the lock: the call that held it may have refreshed.
                    value = self._fresh_token()
                    if value is None:
                        token_response = yield self._token_request(request)
                        await token_response.aread()
                        value = self._store(token_response)
            request.headers["Authorization"] = f"Bearer {value}"
            response = yield request
            if response.status_code != 401 or attempt == 1:
                return
            self._invalidate(value)
