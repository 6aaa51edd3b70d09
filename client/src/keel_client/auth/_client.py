"""Talking to Keel's auth service: sessions, service tokens, API-key introspection.

- :class:`AuthClient`: ``/auth/v1/login``, ``/refresh``, ``/logout`` and ``/me`` for a
  service acting on behalf of a user.
- :class:`ServiceCredentials`: the service's own client-credentials token, fetched on first
  use and refreshed before it expires, one token request however many calls need it at once;
  an ``httpx.Auth`` for outbound calls.
- :class:`TokenIntrospector`: RFC 7662 introspection of API keys with a short, bounded
  in-memory cache (negative answers cached too).
- :class:`Authenticator`: one entry point for an incoming bearer credential; ``keel_…`` API
  keys go to introspection, JWTs to the local :class:`~keel_client.auth.TokenVerifier`.

Every HTTP failure is a ``keel_client.http`` error (``ClientError`` for a 401, ...).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Generator, Mapping
from dataclasses import dataclass
from typing import Any, Unpack
from urllib.parse import quote_plus

import httpx
import pydantic
from pydantic import SecretStr

from keel_client.auth._principal import Principal
from keel_client.auth._verifier import InvalidToken, TokenVerifier
from keel_client.http import BaseAPIClient, ClientCredentials, RequestOptions

__all__ = [
    "API_KEY_PREFIX",
    "AuthClient",
    "Authenticator",
    "ServiceCredentials",
    "TokenIntrospector",
    "TokenSet",
]

#: Every Keel API key starts with this; a JWT never does (it starts with ``eyJ``).
API_KEY_PREFIX = "keel_"
TOKEN_PATH = "/auth/v1/oauth/token"  # noqa: S105 - a path, not a secret
INTROSPECTION_PATH = "/auth/v1/oauth/introspect"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class TokenSet(pydantic.BaseModel):
    """The tokens a login or a refresh returns. Tokens are left out of ``repr``.

    Example::

        tokens = await auth.login("alice", password)
        tokens = await auth.refresh(tokens.refresh_token)
    """

    model_config = pydantic.ConfigDict(frozen=True)

    access_token: str = pydantic.Field(repr=False)
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type, not a secret
    expires_in: int
    refresh_token: str | None = pydantic.Field(default=None, repr=False)
    scope: str = ""


class _Me(pydantic.BaseModel):
    subject: str
    tenant_id: str
    principal_type: str
    roles: list[str] = []
    permissions: list[str] = []
    credential: str = "jwt"


class AuthClient(BaseAPIClient):
    """A client for Keel's session endpoints, on the resilient base client.

    Example::

        async with AuthClient("https://keel.internal") as auth:
            tokens = await auth.login("alice", password, tenant="default")
            principal = await auth.me(tokens.access_token)
            tokens = await auth.refresh(tokens.refresh_token)
            await auth.logout(tokens.access_token)

    A refused login, a reused refresh token or an ended session raise
    ``keel_client.http.ClientError`` with ``status == 401``. Every other keyword argument is a
    ``BaseAPIClient`` option (timeouts, retries, ``transport``...). Give this client no
    ``auth=``: the calls carry the user's own token. Each call takes per-call
    ``RequestOptions`` (``timeout``, ``deadline``, ``max_retries``...) over the defaults.
    ``keel_client.Keel``'s ``keel.auth`` is one of these on the shared connection pool.
    """

    async def login(
        self,
        username: str,
        password: str | SecretStr,
        tenant: str = "default",
        totp_code: str | SecretStr | None = None,
        **options: Unpack[RequestOptions],
    ) -> TokenSet:
        """Exchange a username (or e-mail) and password (and a TOTP code) for tokens."""
        body: dict[str, Any] = {
            "tenant": tenant,
            "username": username,
            "password": _reveal(password),
        }
        if totp_code is not None:
            body["totp_code"] = _reveal(totp_code)
        return await self.post("/auth/v1/login", json=body, response_model=TokenSet, **options)

    async def refresh(
        self, refresh_token: str | SecretStr, **options: Unpack[RequestOptions]
    ) -> TokenSet:
        """Rotate a refresh token; the old one must not be used again."""
        return await self.post(
            "/auth/v1/refresh",
            json={"refresh_token": _reveal(refresh_token)},
            response_model=TokenSet,
            **options,
        )

    async def logout(
        self, access_token: str | SecretStr, **options: Unpack[RequestOptions]
    ) -> None:
        """End the session the access token belongs to."""
        await self.post("/auth/v1/logout", headers=_bearer(_reveal(access_token)), **options)

    async def me(self, token: str | SecretStr, **options: Unpack[RequestOptions]) -> Principal:
        """Who a token (or API key) stands for, as Keel sees it now (revocation included)."""
        me = await self.get(
            "/auth/v1/me", headers=_bearer(_reveal(token)), response_model=_Me, **options
        )
        return Principal(
            subject=me.subject,
            tenant_id=me.tenant_id,
            principal_type=me.principal_type,
            roles=frozenset(me.roles),
            permissions=frozenset(me.permissions),
            credential=me.credential,
        )


def _reveal(value: str | SecretStr) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


class _ClientSecretBasic(httpx.Auth):
    """RFC 6749 section 2.3.1 client authentication: form-encoded id and secret in Basic."""

    def __init__(self, client_id: str, client_secret: SecretStr) -> None:
        pair = f"{quote_plus(client_id)}:{quote_plus(client_secret.get_secret_value())}"
        self._header = SecretStr("Basic " + base64.b64encode(pair.encode()).decode())

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header.get_secret_value()
        yield request


class ServiceCredentials(ClientCredentials):
    """The calling service's own identity: a Keel client-credentials token, always fresh.

    An ``httpx.Auth`` (so it plugs into any ``BaseAPIClient`` or bare httpx client) that
    fetches a token from ``<base_url>/auth/v1/oauth/token`` on first use and again
    ``refresh_margin`` seconds before it expires; many concurrent calls needing a token make
    exactly one token request. :meth:`token` hands out the current token for other uses.

    Example::

        credentials = ServiceCredentials(
            "https://keel.internal", client_id="kc_…", client_secret=secret, audience="billing"
        )
        async with BillingAPI(auth=credentials) as billing:
            await billing.invoice("42")
        token = await credentials.token()

    ``token_url`` replaces the URL derived from ``base_url``; ``clock`` (monotonic seconds)
    is injectable for tests.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        client_id: str,
        client_secret: str | SecretStr,
        scope: str | None = None,
        audience: str | None = None,
        token_url: str | None = None,
        refresh_margin: float = 30.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if token_url is None:
            if base_url is None:
                raise ValueError("give the Keel base_url or the token_url")
            token_url = base_url.rstrip("/") + TOKEN_PATH
        super().__init__(
            token_url,
            client_id=client_id,
            client_secret=client_secret,
            scope=scope,
            audience=audience,
            refresh_margin=refresh_margin,
            clock=clock,
        )
        self._timeout = httpx.Timeout(timeout)
        self._http: httpx.AsyncClient | None = None

    async def token(self) -> str:
        """The current access token, fetched or refreshed first when due (single-flight)."""
        value = self._fresh_token()
        if value is not None:
            return value
        async with self._async_lock:
            value = self._fresh_token()
            if value is None:
                if self._http is None:
                    self._http = httpx.AsyncClient(timeout=self._timeout)
                template = httpx.Request(
                    "POST", self.token_url, extensions={"timeout": self._timeout.as_dict()}
                )
                response = await self._http.send(self._token_request(template))
                await response.aread()
                value = self._store(response)
            return value

    def client_authentication(self) -> httpx.Auth:
        """An ``httpx.Auth`` sending this client's id and secret (``client_secret_basic``),
        e.g. to introspect tokens as a client (RFC 7662) without a token of its own."""
        return _ClientSecretBasic(self.client_id, self._client_secret)

    async def aclose(self) -> None:
        """Close the connection pool :meth:`token` uses (the auth flow needs none)."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None


@dataclass(frozen=True, slots=True)
class _Introspected:
    principal: Principal | None
    expires: float


class TokenIntrospector(BaseAPIClient):
    """Verifies API keys (or any opaque token) by RFC 7662 introspection, with a cache.

    Keel answers ``POST /auth/v1/oauth/introspect`` for an authenticated caller: pass the
    service's client credentials (``credentials.client_authentication()``, any service
    account may introspect) or a bearer (``ServiceCredentials`` / ``BearerToken(api_key)``)
    whose principal holds ``auth:token:introspect``.

    Active answers are cached for ``cache_ttl`` seconds (never past the token's ``exp``),
    inactive ones for ``negative_ttl``; the cache keeps at most ``cache_size`` entries, keyed by
    a SHA-256 of the token. Concurrent introspections of one token share one request. A
    revoked key is therefore refused at most ``cache_ttl`` seconds after its revocation.

    Example::

        introspector = TokenIntrospector(
            "https://keel.internal", auth=credentials.client_authentication()
        )
        principal = await introspector.introspect(api_key)   # raises InvalidToken

    Every other keyword argument is a ``BaseAPIClient`` option.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        auth: httpx.Auth,
        cache_ttl: float = 30.0,
        negative_ttl: float = 5.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        **options: Any,
    ) -> None:
        super().__init__(base_url, auth=auth, **options)
        self.cache_ttl = cache_ttl
        self.negative_ttl = negative_ttl
        self._cache_size = cache_size
        self._clock = clock
        self._cache: OrderedDict[bytes, _Introspected] = OrderedDict()
        self._in_flight: dict[bytes, asyncio.Future[_Introspected]] = {}
        #: Introspection requests sent (cache misses), for health checks and tests.
        self.requests = 0

    async def introspect(self, token: str) -> Principal:
        """The principal an active token stands for; :class:`InvalidToken` when inactive."""
        key = hashlib.sha256(token.encode()).digest()
        entry = self._cache.get(key)
        if entry is not None and self._clock() < entry.expires:
            return _principal_or_raise(entry)
        future = self._in_flight.get(key)
        if future is None:
            future = asyncio.ensure_future(self._fetch(key, token))
            self._in_flight[key] = future
            future.add_done_callback(lambda _: self._in_flight.pop(key, None))
        # Shielded: one caller giving up must not cancel the request others wait for.
        return _principal_or_raise(await asyncio.shield(future))

    async def _fetch(self, key: bytes, token: str) -> _Introspected:
        self.requests += 1
        # Introspection changes nothing: safe to retry like a GET.
        response = await self.post(INTROSPECTION_PATH, data={"token": token}, idempotent=True)
        body = response.json()
        now = self._clock()
        if not isinstance(body, dict) or body.get("active") is not True:
            entry = _Introspected(None, now + self.negative_ttl)
        else:
            expires = now + self.cache_ttl
            exp = body.get("exp")
            if isinstance(exp, int | float):
                expires = min(expires, now + (exp - time.time()))
            entry = _Introspected(_principal_from_introspection(body), expires)
        self._cache[key] = entry
        self._cache.move_to_end(key)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return entry

    def forget(self, token: str) -> None:
        """Drop a token's cached answer (after learning it was revoked)."""
        self._cache.pop(hashlib.sha256(token.encode()).digest(), None)

    def clear(self) -> None:
        self._cache.clear()


def _principal_or_raise(entry: _Introspected) -> Principal:
    if entry.principal is None:
        raise InvalidToken("inactive", "the credential is invalid, expired or revoked")
    return entry.principal


def _principal_from_introspection(body: Mapping[str, Any]) -> Principal:
    if body.get("token_type") == "api_key":
        return Principal(
            subject=str(body.get("sub", "")),
            tenant_id=str(body.get("tid", "")),
            principal_type=str(body.get("typ", "user")),
            roles=frozenset(_strings(body.get("roles"))),
            permissions=frozenset(_strings(body.get("permissions"))),
            credential="api_key",
            claims=dict(body),
        )
    return Principal.from_claims(body)


def _strings(value: Any) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


class Authenticator:
    """Turns an incoming bearer credential into a :class:`Principal`.

    ``keel_…`` API keys are introspected (cached) by the :class:`TokenIntrospector`; anything
    else is verified locally as a JWT by the :class:`TokenVerifier`. Refusals raise
    :class:`InvalidToken`; Keel being unreachable raises a ``keel_client.http`` error.

    Example::

        credentials = ServiceCredentials(KEEL, client_id=..., client_secret=...)
        authenticator = Authenticator.from_url(
            KEEL, audience="orders", introspection_auth=credentials.client_authentication()
        )
        principal = await authenticator.authenticate(bearer)
    """

    def __init__(
        self, verifier: TokenVerifier, introspector: TokenIntrospector | None = None
    ) -> None:
        self.verifier = verifier
        self.introspector = introspector

    @classmethod
    def from_url(
        cls,
        base_url: str,
        *,
        audience: str | Collection[str] | None = "keel",
        introspection_auth: httpx.Auth | None = None,
        introspection_cache_ttl: float = 30.0,
        **verifier_options: Any,
    ) -> Authenticator:
        """A verifier for Keel at ``base_url`` (OIDC discovery) and, when
        ``introspection_auth`` is given, an introspector accepting API keys."""
        verifier = TokenVerifier.from_url(base_url, audience=audience, **verifier_options)
        introspector = (
            TokenIntrospector(base_url, auth=introspection_auth, cache_ttl=introspection_cache_ttl)
            if introspection_auth is not None
            else None
        )
        return cls(verifier, introspector)

    async def authenticate(self, credential: str) -> Principal:
        if credential.startswith(API_KEY_PREFIX):
            if self.introspector is None:
                raise InvalidToken("api_key_not_accepted", "this service accepts no API keys")
            return await self.introspector.introspect(credential)
        return await self.verifier.verify(credential)

    async def aclose(self) -> None:
        if self.introspector is not None:
            await self.introspector.aclose()
