"""FastAPI integration: protect a service's routes with Keel credentials.

Install the ``fastapi`` extra (``pip install keel-client[fastapi]``); nothing else in
``keel_client`` imports FastAPI.

Example::

    from typing import Annotated
    from fastapi import FastAPI
    from keel_client.auth import Principal, ServiceCredentials, TokenIntrospector, TokenVerifier
    from keel_client.fastapi import CurrentPrincipal, KeelAuth, require_permission, require_role

    credentials = ServiceCredentials(KEEL, client_id=..., client_secret=...)
    app = FastAPI()
    KeelAuth(
        TokenVerifier.from_url(KEEL, audience="orders"),
        TokenIntrospector(KEEL, auth=credentials.client_authentication()),  # API keys
        public_paths=("/health/live", "/health/ready"),
    ).install(app)

    @app.get("/orders", dependencies=[require_permission("orders:order:read")])
    async def list_orders(principal: CurrentPrincipal): ...

    @app.delete("/orders/{id}")
    async def delete_order(id: str, admin: Annotated[Principal, require_role("orders-admin")]): ...

- :meth:`KeelAuth.install` registers the problem+json error handler and, unless
  ``middleware=False``, :class:`KeelAuthMiddleware`, which authenticates every request except
  ``public_paths`` and stores the caller in ``request.state.principal``.
- ``require_auth`` (``CurrentPrincipal``) returns the caller: the one the middleware found, or
  it authenticates the request itself when the middleware is off.
- ``require_role(name)`` and ``require_permission("svc:res:act")`` are dependencies answering
  403 when the caller lacks the role or permission (they imply ``require_auth``).

A missing or refused credential answers 401 with ``WWW-Authenticate: Bearer`` (RFC 6750) and
an RFC 9457 ``application/problem+json`` body; Keel unreachable for a needed key fetch or
introspection answers 503. The credential is never echoed or logged.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Request
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from keel_client.auth._client import Authenticator, TokenIntrospector
from keel_client.auth._principal import Principal
from keel_client.auth._verifier import InvalidToken, TokenVerifier
from keel_client.http import KeelHTTPError

__all__ = [
    "PRINCIPAL_SCOPE_KEY",
    "AuthProblem",
    "CurrentPrincipal",
    "KeelAuth",
    "KeelAuthMiddleware",
    "require_auth",
    "require_permission",
    "require_role",
    "use_keel_edge",
]

#: Where the authenticated :class:`Principal` is kept in the ASGI scope.
PRINCIPAL_SCOPE_KEY = "keel.principal"
PROBLEM_CONTENT_TYPE = "application/problem+json"
DEFAULT_PUBLIC_PATHS = ("/health/live", "/health/ready", "/health/startup")


class AuthProblem(Exception):
    """A refused request, rendered as RFC 9457 problem+json (401, 403 or 503).

    Raise it from a service's own checks to answer like the Keel dependencies do::

        raise AuthProblem.forbidden("Only the order's owner may cancel it.")
    """

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.code = code
        self.headers = headers or {}

    @classmethod
    def unauthorized(
        cls, detail: str, *, code: str | None = None, realm: str = "keel"
    ) -> AuthProblem:
        challenge = f'Bearer realm="{realm}"'
        if code is not None:
            # RFC 6750 section 3: a credential was presented and refused.
            challenge += f', error="invalid_token", error_description="{detail}"'
        return cls(
            401,
            "unauthorized",
            "Authentication required",
            detail,
            code=code,
            headers={"WWW-Authenticate": challenge},
        )

    @classmethod
    def forbidden(cls, detail: str, *, realm: str = "keel") -> AuthProblem:
        return cls(
            403,
            "forbidden",
            "Forbidden",
            detail,
            code="forbidden",
            headers={"WWW-Authenticate": f'Bearer realm="{realm}", error="insufficient_scope"'},
        )

    @classmethod
    def unavailable(cls, detail: str) -> AuthProblem:
        return cls(503, "unavailable", "Service unavailable", detail, code="auth_unavailable")

    def response(self) -> Response:
        body: dict[str, Any] = {
            "type": f"urn:keel:problem:{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.code is not None:
            body["code"] = self.code
        return JSONResponse(
            body, status_code=self.status, headers=self.headers, media_type=PROBLEM_CONTENT_TYPE
        )


def bearer_credential(headers: Headers) -> str | None:
    """The credential of an ``Authorization: Bearer`` header, or ``None``."""
    header = headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


class KeelAuth:
    """How a FastAPI service authenticates callers: configured once, installed on the app.

    Example::

        KeelAuth(TokenVerifier.from_url(KEEL, audience="orders")).install(app)

    ``verifier`` checks JWTs locally; ``introspector`` (optional) accepts ``keel_…`` API keys
    by cached introspection. ``public_paths`` are let through by the middleware unauthenticated:
    an entry matches its exact path, or every path below it when it ends with ``/``.
    """

    def __init__(
        self,
        verifier: TokenVerifier,
        introspector: TokenIntrospector | None = None,
        *,
        public_paths: Iterable[str] = DEFAULT_PUBLIC_PATHS,
        realm: str = "keel",
    ) -> None:
        self.authenticator = Authenticator(verifier, introspector)
        paths = list(public_paths)
        self.public_paths = frozenset(path for path in paths if not path.endswith("/"))
        self.public_prefixes = tuple(path for path in paths if path.endswith("/"))
        self.realm = realm

    @classmethod
    def for_keel(
        cls,
        keel: Any,
        *,
        audience: str | None = None,
        public_paths: Iterable[str] = DEFAULT_PUBLIC_PATHS,
        realm: str = "keel",
    ) -> KeelAuth:
        """Authenticate callers against the Keel a service already made: JWTs verified
        locally against its JWKS (``audience`` checked when given), API keys introspected
        with the service's own credential (``keel``'s).

        Example::

            keel = Keel.from_env()
            KeelAuth.for_keel(keel).install(app, middleware=False)
        """
        base_url = keel.api.base_url
        return cls(
            TokenVerifier.from_url(base_url, audience=audience),
            # The service's own credential authenticates its introspection calls.
            TokenIntrospector(base_url, auth=keel.api._http.auth),
            public_paths=public_paths,
            realm=realm,
        )

    def install(self, app: FastAPI, *, middleware: bool = True) -> None:
        """Make the dependencies find this configuration, render refusals as problem+json
        and (by default) add :class:`KeelAuthMiddleware`."""
        app.state.keel_auth = self
        app.add_exception_handler(AuthProblem, _render_problem)
        if middleware:
            app.add_middleware(KeelAuthMiddleware, keel_auth=self)

    def is_public(self, path: str) -> bool:
        return path in self.public_paths or path.startswith(self.public_prefixes)

    async def authenticate(self, headers: Headers) -> Principal:
        """The caller of a request with these headers; :class:`AuthProblem` when refused."""
        credential = bearer_credential(headers)
        if credential is None:
            raise AuthProblem.unauthorized(
                "This API needs a bearer token or API key.", realm=self.realm
            )
        try:
            return await self.authenticator.authenticate(credential)
        except InvalidToken as error:
            raise AuthProblem.unauthorized(str(error), code=error.code, realm=self.realm) from None
        except (KeelHTTPError, httpx.HTTPError) as error:
            raise AuthProblem.unavailable(
                "Keel could not be reached to check the credential."
            ) from error

    async def aclose(self) -> None:
        await self.authenticator.aclose()


async def _render_problem(request: Request, error: Exception) -> Response:
    assert isinstance(error, AuthProblem)
    return error.response()


class KeelAuthMiddleware:
    """ASGI middleware authenticating every HTTP and WebSocket request but public paths.

    The principal is stored in ``scope["state"]["principal"]`` (``request.state.principal``)
    and ``scope["keel.principal"]``; a refused HTTP request is answered with the 401/503
    problem, a refused WebSocket is closed (policy violation) before it is accepted.
    :meth:`KeelAuth.install` adds it; by hand (e.g. to order it among other middleware)::

        keel_auth = KeelAuth(verifier)
        keel_auth.install(app, middleware=False)
        app.add_middleware(KeelAuthMiddleware, keel_auth=keel_auth)
    """

    def __init__(self, app: ASGIApp, keel_auth: KeelAuth) -> None:
        self.app = app
        self.keel_auth = keel_auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.keel_auth.is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        try:
            principal = await self.keel_auth.authenticate(Headers(scope=scope))
        except AuthProblem as problem:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await problem.response()(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        scope[PRINCIPAL_SCOPE_KEY] = principal
        await self.app(scope, receive, send)


def _installed(request: Request) -> KeelAuth:
    keel_auth = getattr(request.app.state, "keel_auth", None)
    if not isinstance(keel_auth, KeelAuth):
        raise RuntimeError("KeelAuth is not installed on this app: call KeelAuth(...).install(app)")
    return keel_auth


async def require_auth(request: Request) -> Principal:
    """The authenticated caller (a FastAPI dependency); 401 problem when there is none."""
    principal = request.scope.get(PRINCIPAL_SCOPE_KEY)
    if isinstance(principal, Principal):
        return principal
    principal = await _installed(request).authenticate(request.headers)
    request.scope[PRINCIPAL_SCOPE_KEY] = principal
    request.state.principal = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(require_auth)]


def require_role(role: str) -> Any:
    """A dependency answering 403 unless the caller has ``role``; it returns the principal.

    Use it in ``dependencies=[require_role("x")]`` or as
    ``principal: Annotated[Principal, require_role("x")]``.
    """

    async def check(principal: CurrentPrincipal, request: Request) -> Principal:
        if not principal.has_role(role):
            raise AuthProblem.forbidden(f"This needs the role {role!r}.", realm=_realm(request))
        return principal

    check.__name__ = f"require_role_{role}"
    return Depends(check)


def require_permission(permission: str) -> Any:
    """A dependency answering 403 unless the caller holds ``permission``
    (``service:resource:action``, wildcards in the granted permissions honoured)."""

    async def check(principal: CurrentPrincipal, request: Request) -> Principal:
        if not principal.has_permission(permission):
            raise AuthProblem.forbidden(
                f"This needs the permission {permission!r}.", realm=_realm(request)
            )
        return principal

    check.__name__ = f"require_{permission.replace(':', '_').replace('*', 'any')}"
    return Depends(check)


def _realm(request: Request) -> str:
    keel_auth = getattr(request.app.state, "keel_auth", None)
    return keel_auth.realm if isinstance(keel_auth, KeelAuth) else "keel"


def use_keel_edge(
    app: FastAPI,
    keel: Any = None,
    *,
    service: str,
    redis_url: str | None = None,
    limiter: Any = None,
    authenticator: Any = None,
    tenant_id: str | None = None,
    local_copy: str | None = None,
    forwarded_hops: int = 0,
    ssrf: Any = None,
) -> Any:
    """Enforce the gateway's routes for ``service`` inside the app: one line instead of a
    project template's security middleware.

    The routes whose upstream pool is ``service`` are fetched from Keel and followed
    (``keel.edge.client(service=...)``); their authentication, required roles and
    permissions, rate limits, CORS, security headers, body size limits and SSRF rules are
    applied by :class:`keel_client.edge.EdgeMiddleware`, the code the gateway's proxy runs.
    A request no route takes passes through untouched, except that a client's
    ``Keel-Identity`` header is dropped.

    Example::

        from keel_client import Keel
        from keel_client.fastapi import use_keel_edge

        app = FastAPI()
        keel = Keel.from_env()                 # KEEL_URL, KEEL_TOKEN
        use_keel_edge(app, keel, service="orders", redis_url="redis://cache:6379/0")

    - ``keel``: a :class:`keel_client.Keel` (default ``Keel.from_env()``); its credential
      needs ``gateway:policy:read`` (and ``gateway:ratelimit:hit`` without Redis).
    - Rate limits count in Redis when ``redis_url`` is given (every replica shares one
      count; ``pip install redis``), else in Keel (one call per limited request), or in
      ``limiter`` (any ``LimiterStore``).
    - Callers are authenticated as ``KeelAuth`` does: JWTs verified locally against Keel's
      JWKS, API keys introspected (cached); ``tenant_id`` refuses other tenants' principals.
    - ``local_copy`` keeps the last known good policy on disk for a start without Keel.

    Returns the :class:`~keel_client.edge.EdgeClient` (for ``on_change``); the Keel closes
    it when it closes.
    """
    from keel_client._keel import Keel
    from keel_client.auth._client import TokenIntrospector
    from keel_client.auth._verifier import TokenVerifier
    from keel_client.edge._middleware import EdgeMiddleware
    from keel_client.edge._remote_limits import KeelLimiterStore

    if keel is None:
        keel = Keel.from_env()
    edge = keel.edge.client(service=service, local_copy=local_copy)
    if authenticator is None:
        base_url = keel.api.base_url
        authenticator = Authenticator(
            TokenVerifier.from_url(base_url, audience=None),
            # The service's own credential authenticates its introspection calls.
            TokenIntrospector(base_url, auth=keel.api._http.auth),
        )
    if limiter is None:
        if redis_url is not None:
            import redis.asyncio as redis  # the service's own dependency, when it counts there
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            from keel_client.edge._ratelimit import RedisLimiterStore

            # Short timeouts and no client retries: during an outage each rule's fail mode
            # answers at once instead of redis-py's retries holding the request for seconds.
            limiter = RedisLimiterStore(
                redis.Redis.from_url(
                    redis_url,
                    socket_timeout=1.0,
                    socket_connect_timeout=1.0,
                    retry=Retry(NoBackoff(), 0),
                )
            )
        else:
            limiter = KeelLimiterStore(keel.api)
    app.add_middleware(
        EdgeMiddleware,
        source=edge,
        authenticator=authenticator,
        limiter=limiter,
        tenant_id=tenant_id,
        forwarded_hops=forwarded_hops,
        ssrf=ssrf,
    )
    return edge
