"""The edge policy applied to one request: the code the gateway and ``use_keel_edge`` share.

::

    EdgeEnforcer(policy).check(scope, receive)
      ├─ route       RouteTable.match ─ none: 404 · method: 405 + Allow · bad path: 400
      ├─ CORS        a preflight is answered here (204 or 403), before any credential
      ├─ size        Content-Length over the route's max_body_bytes: 413
      ├─ identity    Authorization: Bearer <JWT | API key> ─ malformed/refused: 401,
      │              another tenant's: 401, Keel unreachable: 503
      ├─ grants      roles and permissions the route requires: 403
      ├─ limits      every rate limit of the route, one store round trip each: 429 + Retry-After
      │              (store down: the rule's fail mode; closed: 503)
      └─ SSRF        URL parameters checked (every address form, DNS answers): 400
    → Verdict: the route, the principal, a refusal to send instead, the fields to add

    RoutePlan.finish(headers) on the response: the route's response transform, then its
    security-header profile, then CORS and RateLimit fields.

A refusal is an RFC 9457 problem+json body with a stable ``type`` (``urn:keel:problem:…``,
as Keel's own API answers). Nothing a client sent (a credential, a header value) is echoed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from keel_client.auth._principal import Principal
from keel_client.auth._verifier import InvalidToken
from keel_client.edge._cors import Cors
from keel_client.edge._headers import SecurityHeaders
from keel_client.edge._match import MethodMismatch, RouteMatch, RouteTable, is_normalized
from keel_client.edge._model import EdgePolicy, Route, SsrfParameter
from keel_client.edge._ratelimit import (
    LimiterStore,
    RateLimitDecision,
    combine,
    rate_limit_headers,
)

# The SSRF guard lives with the SDK's HTTP stack (httpx): imported when a route first checks
# a URL parameter, so a process whose routes have none never loads it.
if TYPE_CHECKING:
    from keel_client.http._ssrf import SSRFPolicy

__all__ = [
    "IDENTITY_HEADERS",
    "BodyTooLarge",
    "EdgeAuthenticator",
    "EdgeEnforcer",
    "Refusal",
    "RoutePlan",
    "Verdict",
    "limited_receive",
    "problem",
]

log = logging.getLogger("keel_client.edge")

Headers = list[tuple[bytes, bytes]]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

PROBLEM_TYPE_PREFIX = "urn:keel:problem:"
API_KEY_PREFIX = "keel_"
#: Headers that only the gateway may set: a client's copy is dropped before anything else
#: reads the request, so an upstream can trust what it finds there.
IDENTITY_HEADERS = frozenset({b"keel-identity"})
#: The most of a body read to check the URL parameters in it (form or JSON).
MAX_INSPECTED_BODY = 1024 * 1024


class EdgeAuthenticator(Protocol):
    """Turns a bearer credential into a :class:`Principal`; refusals raise ``InvalidToken``,
    Keel being unreachable raises anything else (answered 503).
    ``keel_client.auth.Authenticator`` is one."""

    async def authenticate(self, credential: str) -> Principal: ...


@dataclass(frozen=True, slots=True)
class Refusal:
    """A response the edge sends instead of letting the request through."""

    status: int
    headers: Headers
    body: bytes
    #: An answer to a CORS preflight: its headers already are the CORS answer, which the
    #: route's actual-response CORS fields must not replace.
    is_preflight: bool = False


def problem(
    status: int, slug: str, title: str, detail: str, headers: Sequence[tuple[bytes, bytes]] = ()
) -> Refusal:
    """An RFC 9457 problem+json refusal."""
    body = json.dumps(
        {"type": PROBLEM_TYPE_PREFIX + slug, "title": title, "status": status, "detail": detail},
        separators=(",", ":"),
    ).encode()
    return Refusal(
        status,
        [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ],
        body,
    )


class BodyTooLarge(Exception):
    """The request body grew past the route's ``max_body_bytes`` while it streamed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")
        self.limit = limit

    def refusal(self) -> Refusal:
        return problem(413, "payload-too-large", "Payload too large", str(self))


def limited_receive(receive: Receive, limit: int) -> Receive:
    """``receive`` raising :class:`BodyTooLarge` once the body passes ``limit`` bytes (a
    chunked body has no Content-Length to refuse it by up front)."""
    seen = 0

    async def counted() -> MutableMapping[str, Any]:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return counted


def replay_receive(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` giving ``body`` (already read) first, then the original's messages
    (a disconnect, say)."""
    sent = False

    async def replay() -> MutableMapping[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


@dataclass(slots=True)
class Verdict:
    """What :meth:`EdgeEnforcer.check` decided for one request."""

    match: RouteMatch | None = None
    plan: RoutePlan | None = None
    principal: Principal | None = None
    refusal: Refusal | None = None
    #: Fields for the response whatever it is (RateLimit, CORS).
    response_headers: Headers = field(default_factory=list)
    #: The request headers to pass on: the route's request transform applied, identity
    #: headers a client sent removed.
    request_headers: Headers = field(default_factory=list)
    #: The ``receive`` to read the body from: the original, limited to the route's size,
    #: or a replay of what was read to check URL parameters in it.
    receive: Receive | None = None


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


class RoutePlan:
    """One route compiled for the hot path: everything computable once per policy."""

    def __init__(self, route: Route) -> None:
        self.route = route
        self.security = SecurityHeaders(route.headers)
        self.cors = Cors(route.cors) if route.cors is not None else None
        self.request_remove = frozenset(name.encode() for name in route.request_headers.remove)
        self.request_set = [
            (name.encode(), value.encode()) for name, value in route.request_headers.set.items()
        ]
        self.request_drop = (
            IDENTITY_HEADERS | self.request_remove | {name for name, _ in self.request_set}
        )
        self.response_remove = frozenset(
            name.encode() for name in route.response_headers.remove
        ) | {name.encode() for name in route.response_headers.set}
        self.response_set = [
            (name.encode(), value.encode()) for name, value in route.response_headers.set.items()
        ]
        self.needs_body = any(rule.location in ("json", "form") for rule in route.ssrf)

    def request_headers(self, headers: Sequence[tuple[bytes, bytes]]) -> Headers:
        """The request's headers as they go on: identity headers and the transform's
        removals dropped, its values set."""
        drop = self.request_drop
        kept = [(name, value) for name, value in headers if name not in drop]
        kept.extend(self.request_set)
        return kept

    def finish(
        self, headers: Headers, verdict: Verdict, origin: bytes | None, *, cors: bool = True
    ) -> Headers:
        """The response's headers as they go out. ``cors=False`` for a preflight's answer,
        whose fields are already the CORS answer (:attr:`Refusal.is_preflight`)."""
        if self.response_remove:
            headers = [(name, value) for name, value in headers if name not in self.response_remove]
        headers.extend(self.response_set)
        headers = self.security.apply(headers)
        if self.cors is not None and cors:
            headers = self.cors.apply(headers, origin)
        if verdict.response_headers:
            headers.extend(verdict.response_headers)
        return headers


class EdgeEnforcer:
    """A policy compiled for checking requests (build a new one when the policy changes).

    ``tenant_id`` refuses principals of any other tenant. ``service_view=True`` matches
    routes without their hosts (a service behind no gateway). ``forwarded_hops`` is how many
    proxies in front are trusted to append to ``X-Forwarded-For`` (0: the peer address is the
    client). ``ssrf`` is the policy URL parameters are checked with (public addresses only
    unless it allows more). ``key_secret`` keys the hash under which API keys are counted,
    so the counters' keys reveal nothing.

    Example::

        enforcer = EdgeEnforcer(policy, authenticator=authenticator, limiter=MemoryLimiterStore())
        verdict = await enforcer.check(scope, receive)
        if verdict.refusal is not None:
            ...  # send it
    """

    def __init__(
        self,
        policy: EdgePolicy,
        *,
        authenticator: EdgeAuthenticator | None,
        limiter: LimiterStore,
        tenant_id: str | None = None,
        service_view: bool = False,
        forwarded_hops: int = 0,
        ssrf: SSRFPolicy | None = None,
        key_secret: bytes = b"",
        pass_unrouted: bool = False,
    ) -> None:
        self.policy = policy
        self.table = RouteTable(policy.routes, ignore_hosts=service_view)
        self.plans = {route.name: RoutePlan(route) for route in policy.routes}
        self.authenticator = authenticator
        self.limiter = limiter
        self.tenant_id = tenant_id
        self.forwarded_hops = forwarded_hops
        self._ssrf = ssrf
        self.key_secret = key_secret
        self.pass_unrouted = pass_unrouted

    # -- the request ------------------------------------------------------------------

    def client_address(self, scope: Mapping[str, Any]) -> str:
        """The caller's address: the peer, or the trusted proxies' ``X-Forwarded-For`` entry."""
        peer = scope.get("client")
        address = str(peer[0]) if peer else ""
        if self.forwarded_hops:
            forwarded = _header(scope["headers"], b"x-forwarded-for")
            if forwarded:
                hops = [part.strip() for part in forwarded.decode("latin-1").split(",")]
                index = len(hops) - self.forwarded_hops
                if hops and index >= 0 and hops[max(index, 0)]:
                    address = hops[max(index, 0)]
        return address

    async def check(self, scope: Mapping[str, Any], receive: Receive) -> Verdict:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        method: str = scope["method"] if scope["type"] == "http" else "GET"
        path: str = scope["path"]
        if not is_normalized(path):
            return Verdict(
                refusal=problem(
                    400,
                    "malformed-path",
                    "Malformed path",
                    "The path holds an empty, '.' or '..' segment.",
                )
            )
        raw = scope.get("raw_path")
        host = _header(headers, b"host")
        found = self.table.match(
            host.decode("latin-1") if host is not None else None,
            path,
            method,
            raw_path=raw.decode("latin-1") if raw else None,
        )
        if self.pass_unrouted and not isinstance(found, RouteMatch):
            return Verdict(request_headers=_without_identity(headers))
        if found is None:
            return Verdict(
                refusal=problem(404, "not-found", "Not found", "No route takes this request.")
            )
        if isinstance(found, MethodMismatch):
            allow = ", ".join(found.allowed).encode()
            return Verdict(
                refusal=problem(
                    405,
                    "method-not-allowed",
                    "Method not allowed",
                    f"This route takes {', '.join(found.allowed)}.",
                    [(b"allow", allow)],
                )
            )
        plan = self.plans[found.route.name]
        route = plan.route
        verdict = Verdict(match=found, plan=plan)

        if plan.cors is not None and plan.cors.is_preflight(method, headers):
            status, cors_headers = plan.cors.preflight(headers)
            verdict.refusal = Refusal(
                status, [*cors_headers, (b"content-length", b"0")], b"", is_preflight=True
            )
            return verdict

        length = _header(headers, b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared < 0:
                verdict.refusal = problem(
                    400, "malformed-body", "Malformed request", "Content-Length is not a number."
                )
                return verdict
            if declared > route.max_body_bytes:
                verdict.refusal = BodyTooLarge(route.max_body_bytes).refusal()
                return verdict

        # A route open to anyone with no limits (the cheapest there is) awaits nothing.
        refusal = None
        if route.auth.mode != "none":
            refusal = await self._authenticate(route, headers, verdict)
        if refusal is None and route.rate_limits:
            refusal = await self._limit(route, scope, verdict)
        if refusal is not None:
            verdict.refusal = _with_headers(refusal, verdict.response_headers)
            return verdict

        verdict.receive = limited_receive(receive, route.max_body_bytes)
        if route.ssrf:
            refusal = await self._check_urls(route, plan, scope, verdict)
            if refusal is not None:
                verdict.refusal = _with_headers(refusal, verdict.response_headers)
                return verdict
        verdict.request_headers = plan.request_headers(headers)
        return verdict

    # -- identity -----------------------------------------------------------------------

    async def _authenticate(
        self, route: Route, headers: Headers, verdict: Verdict
    ) -> Refusal | None:
        rule = route.auth
        authorization = _header(headers, b"authorization")
        if rule.mode == "none":
            return None
        if authorization is None:
            return _unauthorized("This route needs a bearer token or API key.")
        scheme, _, credential = authorization.decode("latin-1").partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential or " " in credential:
            return _unauthorized("The Authorization header is not 'Bearer <credential>'.")
        is_api_key = credential.startswith(API_KEY_PREFIX)
        if (rule.mode == "jwt" and is_api_key) or (rule.mode == "api_key" and not is_api_key):
            kind = "an access token" if rule.mode == "jwt" else "an API key"
            return _unauthorized(f"This route takes {kind}.")
        if self.authenticator is None:
            return problem(
                503, "unavailable", "Service unavailable", "No authenticator is configured."
            )
        try:
            principal = await self.authenticator.authenticate(credential)
        except InvalidToken:
            return _unauthorized("The credential is invalid, expired or revoked.")
        except asyncio.CancelledError:
            raise
        except Exception as error:  # Keel unreachable for a key fetch or an introspection
            log.warning("edge: cannot check a credential: %s", type(error).__name__)
            return problem(
                503, "unavailable", "Service unavailable", "Credentials cannot be checked now."
            )
        if self.tenant_id is not None and principal.tenant_id != self.tenant_id:
            return _unauthorized("The credential is invalid, expired or revoked.")
        if rule.audience is not None and not is_api_key:
            audience = principal.claims.get("aud")
            audiences = [audience] if isinstance(audience, str) else list(audience or ())
            if rule.audience not in audiences:
                return _unauthorized("The token is not meant for this route.")
        missing_role = next((role for role in rule.roles if not principal.has_role(role)), None)
        missing = next(
            (perm for perm in rule.permissions if not principal.has_permission(perm)), None
        )
        if missing_role is not None or missing is not None:
            what = f"role {missing_role!r}" if missing_role else f"permission {missing!r}"
            return problem(403, "forbidden", "Forbidden", f"This route needs the {what}.")
        verdict.principal = principal
        return None

    # -- rate limits -----------------------------------------------------------------------

    def _limit_key(
        self, kind: str, route: Route, scope: Mapping[str, Any], verdict: Verdict
    ) -> str:
        principal = verdict.principal
        if kind == "principal" and principal is not None:
            value = f"p:{principal.subject}"
        elif kind == "api_key" and principal is not None and principal.credential == "api_key":
            authorization = _header(scope["headers"], b"authorization") or b""
            value = (
                "k:"
                + hashlib.blake2b(
                    authorization, key=self.key_secret[:64], digest_size=16
                ).hexdigest()
            )
        elif kind == "route":
            value = "r"
        elif kind.startswith("header:"):
            found = _header(scope["headers"], kind[7:].lower().encode())
            value = (
                "h:" + found.decode("latin-1")
                if found is not None
                else "a:" + self.client_address(scope)
            )
        else:  # ip, and principal/api_key for a caller without one
            value = "a:" + self.client_address(scope)
        return f"{self.tenant_id or '-'}:{route.name}:{value}"

    async def _limit(
        self, route: Route, scope: Mapping[str, Any], verdict: Verdict
    ) -> Refusal | None:
        if not route.rate_limits:
            return None
        decisions: list[RateLimitDecision] = await self.limiter.hit_many(
            [(rule, self._limit_key(rule.key, route, scope, verdict)) for rule in route.rate_limits]
        )
        decision = combine(decisions)
        verdict.response_headers.extend(rate_limit_headers(decisions))
        if decision.allowed:
            return None
        if decision.degraded:
            return problem(
                503,
                "unavailable",
                "Service unavailable",
                "The rate-limit store cannot be reached and this route fails closed.",
            )
        return problem(
            429,
            "rate-limited",
            "Too many requests",
            f"Rate limit {decision.rule.name!r} reached; retry in {decision.retry_after} s.",
        )

    # -- URL parameters ---------------------------------------------------------------------

    async def _check_urls(
        self, route: Route, plan: RoutePlan, scope: Mapping[str, Any], verdict: Verdict
    ) -> Refusal | None:
        values: list[tuple[SsrfParameter, str]] = []
        query = scope.get("query_string", b"").decode("latin-1")
        body: bytes | None = None
        if plan.needs_body:
            assert verdict.receive is not None
            try:
                body = await _read_body(
                    verdict.receive, min(route.max_body_bytes, MAX_INSPECTED_BODY)
                )
            except BodyTooLarge as error:
                return error.refusal()
            verdict.receive = replay_receive(body, verdict.receive)
        for rule in route.ssrf:
            found = _parameter_values(rule, query, scope["headers"], body)
            if found is None:
                return problem(
                    400,
                    "malformed-body",
                    "Malformed request",
                    f"The body is not {'JSON' if rule.location == 'json' else 'a form'}.",
                )
            if not found and rule.required:
                return problem(
                    400,
                    "ssrf-refused",
                    "URL refused",
                    f"The {rule.location} parameter {rule.name!r} is missing.",
                )
            values.extend((rule, value) for value in found)
        for rule, value in values:
            reason = await self._url_refused(rule, value)
            if reason is not None:
                return problem(
                    400,
                    "ssrf-refused",
                    "URL refused",
                    f"The {rule.location} parameter {rule.name!r} is not a URL this service "
                    f"may fetch: {reason}.",
                )
        return None

    @property
    def ssrf(self) -> SSRFPolicy:
        """The policy URL parameters are checked with (public addresses only by default)."""
        if self._ssrf is None:
            from keel_client.http._ssrf import SSRFPolicy

            self._ssrf = SSRFPolicy()
        return self._ssrf

    async def _url_refused(self, rule: SsrfParameter, value: str) -> str | None:
        from keel_client.http._exceptions import SSRFBlockedError

        if not isinstance(value, str) or len(value) > 8192:
            return "not a URL"
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            return "not a URL"
        if parts.scheme.lower() not in rule.schemes:
            return f"the scheme must be {' or '.join(rule.schemes)}"
        host = (parts.hostname or "").rstrip(".").lower()
        if rule.allow_hosts and not any(
            host == allowed or (allowed.startswith("*.") and host.endswith(allowed[1:]))
            for allowed in rule.allow_hosts
        ):
            return "the host is not on the route's list"
        try:
            self.ssrf.check_url(value)
            if self.ssrf.literal_address(parts.hostname or "") is None:
                port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
                answers = await asyncio.to_thread(self.ssrf.resolver, host, port)
                self.ssrf.check_resolved(host, answers)
        except SSRFBlockedError as error:
            return error.reason if hasattr(error, "reason") else "blocked"
        except OSError:
            return "the host does not resolve"
        except Exception:  # httpcore.ConnectError: nothing resolved
            return "the host does not resolve"
        return None


def _without_identity(headers: Headers) -> Headers:
    return [(name, value) for name, value in headers if name not in IDENTITY_HEADERS]


def _unauthorized(detail: str) -> Refusal:
    return problem(
        401, "unauthorized", "Unauthorized", detail, [(b"www-authenticate", b'Bearer realm="keel"')]
    )


def _with_headers(refusal: Refusal, headers: Headers) -> Refusal:
    if not headers:
        return refusal
    return Refusal(refusal.status, [*refusal.headers, *headers], refusal.body)


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _parameter_values(
    rule: SsrfParameter, query: str, headers: Headers, body: bytes | None
) -> list[str] | None:
    """The values of ``rule``'s parameter in the request (``None``: the body is unreadable)."""
    if rule.location == "query":
        return [
            value for name, value in parse_qsl(query, keep_blank_values=True) if name == rule.name
        ]
    if rule.location == "header":
        name = rule.name.lower().encode()
        return [value.decode("latin-1") for key, value in headers if key == name]
    if not body:
        return []
    if rule.location == "form":
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            return None
        return [value for name, value in pairs if name == rule.name]
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return [
        str(value) if not isinstance(value, str) else value
        for value in _json_path(document, rule.name.split("."))
    ]


def _json_path(node: Any, parts: list[str]) -> list[Any]:
    if not parts:
        return [] if node is None else [node]
    head, rest = parts[0], parts[1:]
    if head == "*":
        children = (
            node
            if isinstance(node, list)
            else list(node.values())
            if isinstance(node, dict)
            else []
        )
        return [value for child in children for value in _json_path(child, rest)]
    if isinstance(node, dict) and head in node:
        return _json_path(node[head], rest)
    return []
