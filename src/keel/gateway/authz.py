"""The edge policy decided for proxies Keel does not run, and rate limits counted for services.

Three decision endpoints let nginx, Traefik and Envoy enforce the tenant's edge policy
(``KEEL_GATEWAY__TENANT``) with the very code Keel's own proxy runs
(:meth:`keel_client.edge.EdgeEnforcer.check`): route, method, CORS preflight, declared size,
credential, roles and permissions, rate limits, and URL parameters in the query or headers.
The proxy forwards the END USER's request headers (``Authorization`` included) without the
body; the endpoint answers the decision and, on success, the signed ``Keel-Identity`` header
the proxy passes upstream.

- ``/gateway/v1/authz/nginx`` (any method): ``auth_request``. The original request is in
  ``X-Original-Method``, ``X-Original-URI`` (``$request_uri``), ``X-Original-Host`` and
  ``X-Original-Content-Length``, as ``keel gateway export nginx`` configures them. nginx reads
  only 2xx (allow), 401 and 403, anything else being its own 500, so every other refusal is
  answered 403 with ``X-Keel-Status: <the real status>`` (and its ``Retry-After``, RateLimit
  and CORS fields) which the exported configuration turns back into that status. A CORS
  preflight the policy allows is answered the same way (403 + ``X-Keel-Status: 204``): nginx
  then answers it itself, and the upstream never sees it.
- ``/gateway/v1/authz/traefik`` (any method): ``forwardAuth``, the original request in
  ``X-Forwarded-Method``, ``-Uri``, ``-Host``. Traefik returns any non-2xx answer to the
  client as it is, so the real status and problem+json are answered.
- ``/gateway/v1/authz/envoy/{path}`` (the original method): Envoy's HTTP ``ext_authz``
  service with ``path_prefix: /gateway/v1/authz/envoy``; the host is ``X-Forwarded-Host``,
  else ``Host``. Like Traefik, the real status.

An allowed request is answered 200 with ``Keel-Identity`` (only for an authenticated caller),
``X-Keel-Subject`` and ``X-Keel-Tenant`` (informational: an upstream must verify
``Keel-Identity``, never trust these), the RateLimit fields and the route's CORS fields.
A ``Keel-Identity`` the client sent is never read and never echoed.

The client address (for ``ip`` rate limits) is the last ``X-Forwarded-For`` entry: the
address the proxy itself saw, as ``$proxy_add_x_forwarded_for`` and Traefik append it.

**These endpoints take no Keel credential**: the ``Authorization`` they see is the end user's.
Make them reachable from the proxies only (bind, firewall or network policy). They reveal
nothing beyond the decision (a problem's fixed text, the caller's own subject and tenant).

``POST /gateway/v1/ratelimit/hit`` counts rate limits for services that run
``use_keel_edge`` without a Redis of their own (``keel_client.edge.KeelLimiterStore``):
permission ``gateway:ratelimit:hit``, counted in Keel's limiter under the caller's tenant, so
a tenant never touches another's counters, nor the counters of the gateway's own routes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import Counter

from keel.core.context import AppContext, ResourceKey
from keel.core.deps import get_context
from keel.gateway.auth import RateLimitCaller
from keel.gateway.enforcement import GATEWAY_ENFORCEMENT, GatewayEnforcement
from keel.gateway.identity import identity_audience, identity_minter
from keel_client.edge._enforce import Refusal, Verdict, problem
from keel_client.edge._remote_limits import RateLimitHits, RemoteDecision, RemoteDecisions

Headers = list[tuple[bytes, bytes]]

#: Every method a proxy may send a check with (nginx's subrequest keeps the original's).
ANY_METHOD: Final = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
#: Envoy's ``path_prefix``: what precedes the original path in its check requests.
ENVOY_PREFIX: Final = b"/gateway/v1/authz/envoy"
#: The header carrying a refusal's real status to nginx (which reads only 401 and 403).
KEEL_STATUS: Final = b"x-keel-status"
#: The key space of counters services ask for: a route name cannot hold ``~``, so these
#: never meet the gateway's own counters (``<tenant>:<route>:…``).
REMOTE_KEY_SPACE: Final = "~service"

#: Request headers that describe the original request to the endpoint: read, not passed on.
_CARRIERS: Final = frozenset(
    {
        b"host",
        b"content-length",
        b"x-original-method",
        b"x-original-uri",
        b"x-original-host",
        b"x-original-content-length",
        b"x-forwarded-method",
        b"x-forwarded-uri",
    }
)
#: Decision outcome names for the metric, by status (a bounded label).
_OUTCOMES: Final = {
    200: "allowed",
    204: "preflight",
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "no_route",
    405: "method_not_allowed",
    413: "too_large",
    429: "rate_limited",
    503: "unavailable",
}

router = APIRouter(prefix="/v1", tags=["gateway"])


# -- metrics --------------------------------------------------------------------------------


class AuthzMetrics:
    """``keel_gateway_authz_decisions_total{engine,outcome}`` on the app's registry."""

    def __init__(self, context: AppContext) -> None:
        self.decisions = Counter(
            "keel_gateway_authz_decisions_total",
            "Decisions of the proxy authorization endpoints, by proxy and outcome.",
            ["engine", "outcome"],
            registry=context.metrics.registry,
        )


AUTHZ_METRICS: ResourceKey[AuthzMetrics] = ResourceKey("gateway.authz_metrics")


def _metrics(context: AppContext) -> AuthzMetrics:
    # Made on first use (no await in between, so one per process).
    metrics = context.resources.get(AUTHZ_METRICS)
    if metrics is None:
        metrics = AuthzMetrics(context)
        context.resources[AUTHZ_METRICS] = metrics
    return metrics


# -- the original request ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OriginalRequest:
    """The request a proxy asks about, as the proxy described it."""

    method: str
    #: The request target as sent: percent-encoded path and ``?query``.
    target: str
    host: str | None
    client: str
    headers: Headers
    content_length: bytes | None = None


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def client_address(headers: Sequence[tuple[bytes, bytes]], peer: str) -> str:
    """The last ``X-Forwarded-For`` entry (what the proxy in front saw), else the peer."""
    forwarded = [value for key, value in headers if key == b"x-forwarded-for"]
    if forwarded:
        last = forwarded[-1].decode("latin-1").split(",")[-1].strip()
        if last:
            return last
    return peer


def original_request(
    request: Request,
    *,
    method_header: bytes | None,
    uri_header: bytes | None,
    host_header: bytes,
    length_header: bytes | None = None,
) -> OriginalRequest:
    """The original request from the headers ``method_header``/``uri_header``/``host_header``
    (``None``: the check request's own method and target)."""
    raw: list[tuple[bytes, bytes]] = list(request.scope["headers"])
    method = _header(raw, method_header) if method_header else None
    target = _header(raw, uri_header) if uri_header else None
    if target is None and uri_header is None:
        path = request.scope.get("raw_path") or request.url.path.encode()
        query = request.scope.get("query_string", b"")
        target = (path.decode("latin-1") or "/") + ("?" + query.decode("latin-1") if query else "")
    host = _header(raw, host_header) or _header(raw, b"host")
    peer = request.client.host if request.client else ""
    length = _header(raw, length_header) if length_header else None
    return OriginalRequest(
        method=(method or request.method).upper(),
        target=target or "",
        host=host,
        client=client_address(raw, peer),
        headers=[(name, value) for name, value in raw if name not in _CARRIERS],
        content_length=length.encode("latin-1") if length else None,
    )


def decision_scope(original: OriginalRequest) -> dict[str, Any] | None:
    """An ASGI HTTP scope for :meth:`EdgeEnforcer.check`; ``None`` for a target that is not
    an origin-form path."""
    target = original.target
    if not target.startswith("/") or len(target) > 8192:
        return None
    raw_path, _, query = target.partition("?")
    raw_path = raw_path.partition("#")[0]
    headers = list(original.headers)
    if original.host:
        headers.append((b"host", original.host.encode("latin-1")))
    if original.content_length:
        headers.append((b"content-length", original.content_length))
    return {
        "type": "http",
        "method": original.method,
        "scheme": "http",
        "path": unquote(raw_path, errors="surrogateescape"),
        "raw_path": raw_path.encode("latin-1", errors="replace"),
        "query_string": query.encode("latin-1", errors="replace"),
        "headers": headers,
        "client": (original.client, 0),
        "server": None,
        "root_path": "",
    }


async def _empty_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


# -- the decision ------------------------------------------------------------------------------


@dataclass(slots=True)
class Decision:
    """A verdict turned into what to answer: the status and fields (and the refusal's body)."""

    status: int
    headers: Headers
    body: bytes = b""


#: How long a decision asked for while the process starts waits for the policy to load.
STARTUP_WAIT_SECONDS = 5.0


def _enforcement(context: AppContext) -> GatewayEnforcement | None:
    return context.resources.get(GATEWAY_ENFORCEMENT)


async def decide(context: AppContext, original: OriginalRequest) -> Decision:
    """Check ``original`` against the served tenant's policy."""
    enforcement = _enforcement(context)
    scope = decision_scope(original)
    if scope is None:
        return _refused(problem(400, "malformed-path", "Malformed request", "Not a path."))
    if enforcement is None or not await enforcement.wait_started(STARTUP_WAIT_SECONDS):
        return _refused(problem(503, "unavailable", "Service unavailable", "No policy is loaded."))
    verdict = await enforcement.enforcer.check(scope, _empty_body)
    if verdict.refusal is not None:
        return _refused(verdict.refusal)
    return Decision(200, await _allowed_headers(context, verdict, scope))


def _refused(refusal: Refusal) -> Decision:
    return Decision(refusal.status, list(refusal.headers), refusal.body)


async def _allowed_headers(context: AppContext, verdict: Verdict, scope: dict[str, Any]) -> Headers:
    headers: Headers = []
    principal = verdict.principal
    if principal is not None and verdict.match is not None:
        minter = identity_minter(context)
        audience = identity_audience(verdict.match.route)
        headers.append((b"keel-identity", await minter.header_for(principal, audience)))
        headers.append((b"x-keel-subject", principal.subject.encode("latin-1", "replace")))
        headers.append((b"x-keel-tenant", principal.tenant_id.encode("latin-1", "replace")))
    headers.extend(verdict.response_headers)
    plan = verdict.plan
    if plan is not None and plan.cors is not None:
        origin = next((value for name, value in scope["headers"] if name == b"origin"), None)
        headers.extend(plan.cors.apply([], origin))
    return headers


def _answer(decision: Decision) -> Response:
    response = Response(content=decision.body, status_code=decision.status)
    # Raw pairs, so repeated fields (two Vary lines, say) go out as they were decided.
    dropped = {b"content-length"} if decision.body else {b"content-length", b"content-type"}
    response.raw_headers = [
        *response.raw_headers,  # Starlette's content-length for the body
        *((name, value) for name, value in decision.headers if name not in dropped),
        (b"cache-control", b"no-store"),
    ]
    return response


def nginx_answer(decision: Decision) -> Decision:
    """The decision as nginx's ``auth_request`` reads it: 2xx, 401, or 403 with the real
    status in ``X-Keel-Status`` (see the module docstring)."""
    if decision.status == 200 or decision.status == 401:
        return decision
    return Decision(
        403,
        [*decision.headers, (KEEL_STATUS, str(decision.status).encode())],
        decision.body if decision.status == 403 else b"",
    )


def _record(context: AppContext, engine: str, status: int) -> None:
    _metrics(context).decisions.labels(engine, _OUTCOMES.get(status, "other")).inc()


# -- the endpoints -------------------------------------------------------------------------------
#
# The three decision endpoints take every method (the proxies call them with the original
# one), which OpenAPI can only describe as one operation per method under one operation id:
# they are left out of the schema and documented in docs/gateway.md instead.


@router.api_route(
    "/authz/nginx", methods=ANY_METHOD, response_class=Response, include_in_schema=False
)
async def authorize_nginx(request: Request) -> Response:
    """nginx ``auth_request``: 200 allows (with ``Keel-Identity``), 401 and 403 refuse; any
    other refusal is 403 with ``X-Keel-Status`` holding the status to answer. Reachable from
    the proxies only: it takes the end user's credential, not a Keel one."""
    context = get_context(request)
    original = original_request(
        request,
        method_header=b"x-original-method",
        uri_header=b"x-original-uri",
        host_header=b"x-original-host",
        length_header=b"x-original-content-length",
    )
    decision = await decide(context, original)
    _record(context, "nginx", decision.status)
    return _answer(nginx_answer(decision))


@router.api_route(
    "/authz/traefik", methods=ANY_METHOD, response_class=Response, include_in_schema=False
)
async def authorize_traefik(request: Request) -> Response:
    """Traefik ``forwardAuth``: 200 allows (with ``Keel-Identity``); a refusal is answered
    with its real status and problem+json, which Traefik hands to the client."""
    context = get_context(request)
    original = original_request(
        request,
        method_header=b"x-forwarded-method",
        uri_header=b"x-forwarded-uri",
        host_header=b"x-forwarded-host",
    )
    decision = await decide(context, original)
    _record(context, "traefik", decision.status)
    return _answer(decision)


@router.api_route(
    "/authz/envoy/{path:path}", methods=ANY_METHOD, response_class=Response, include_in_schema=False
)
async def authorize_envoy(request: Request, path: str) -> Response:
    """Envoy HTTP ``ext_authz`` (``path_prefix: /gateway/v1/authz/envoy``): the check request
    has the original method and path; 200 allows, a refusal is sent to the client as is."""
    context = get_context(request)
    original = original_request(
        request, method_header=None, uri_header=None, host_header=b"x-forwarded-host"
    )
    target = original.target
    # The raw path, so the original's percent-encoding reaches the matcher unchanged.
    prefix = ENVOY_PREFIX.decode()
    target = target[len(prefix) :] if target.startswith(prefix) else target
    original = OriginalRequest(
        original.method,
        target if target.startswith("/") else "/" + target,
        original.host,
        original.client,
        original.headers,
    )
    decision = await decide(context, original)
    _record(context, "envoy", decision.status)
    return _answer(decision)


@router.post("/ratelimit/hit", response_model=RemoteDecisions)
async def hit_rate_limits(
    body: RateLimitHits, request: Request, principal: RateLimitCaller
) -> RemoteDecisions:
    """Count one request under each rule (at most 8) and say what each allows. Counters are
    the caller's tenant's alone; needs ``gateway:ratelimit:hit``."""
    enforcement = _enforcement(get_context(request))
    if enforcement is None:
        raise RuntimeError("the gateway service is not running in this process")
    space = f"{principal.tenant_id}:{REMOTE_KEY_SPACE}:"
    decisions = await enforcement.limiter.hit_many(
        [(hit.rule, space + hit.key) for hit in body.hits], cost=body.cost
    )
    return RemoteDecisions(decisions=[RemoteDecision.of(decision) for decision in decisions])
