"""The edge policy as data: routes, their per-route policies, and the upstream pools.

One :class:`EdgePolicy` per tenant is stored versioned in Keel (``/gateway/v1/policy``) and
enforced by the gateway's proxy and, identically, by services through
``keel_client.fastapi.use_keel_edge``. Everything here is a frozen pydantic model with
``extra="forbid"``: a typo is an error, and an error's ``loc`` names the field, which the
server turns into the problem+json ``errors`` list.

::

    EdgePolicy
      ├─ upstreams: UpstreamPool (targets, balancing, health, breaker)   (_upstreams.py)
      └─ routes: Route
           ├─ selectors: hosts, path + match (prefix | exact | pattern), methods
           ├─ upstream (+ versions: header-selected or weighted canary pools), rewrite
           ├─ auth: RouteAuth (jwt | api_key | jwt_or_api_key | none, roles, permissions)
           ├─ rate_limits: RateLimit                                          (_ratelimit.py)
           ├─ cors: CorsPolicy, headers: HeaderRules                 (_cors.py, _headers.py)
           ├─ ssrf: SsrfParameter (request values that are URLs the service will fetch)
           ├─ max_body_bytes, timeouts, retries                               (_upstreams.py)
           ├─ cache: CachePolicy                                              (_caching.py)
           └─ request_headers / response_headers: HeaderTransform

Which route answers a request is decided by :mod:`keel_client.edge._match`; a policy whose
routes could both claim one request with neither more specific is refused here
(:func:`ambiguous_routes`), so the choice never depends on the order routes were written in.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from keel_client.edge._caching import CachePolicy
from keel_client.edge._cors import CorsPolicy
from keel_client.edge._headers import HeaderRules
from keel_client.edge._ratelimit import RateLimit
from keel_client.edge._upstreams import RetryPolicy, Timeouts, UpstreamPool

__all__ = [
    "MAX_ROUTES",
    "MAX_UPSTREAMS",
    "EdgePolicy",
    "HeaderTransform",
    "Location",
    "Route",
    "RouteAuth",
    "SsrfParameter",
    "VersionRoute",
    "ambiguous_routes",
    "cross_reference_errors",
    "path_shape",
]

MAX_ROUTES = 1000
MAX_UPSTREAMS = 200
#: The largest request body a route may admit: far past any upload a service takes in one
#: request, small enough that a typo (an extra three zeros) is refused.
MAX_BODY_LIMIT = 64 * 1024**3

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")
_METHOD = re.compile(r"^[A-Z]{1,16}$")
_HOST = re.compile(
    r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
)
_SEGMENT_PARAM = re.compile(r"^\{[a-z_][a-z0-9_]{0,31}(:path)?\}$")
#: Characters a literal path segment may hold (RFC 3986 pchar without percent-encoding tricks).
_LITERAL_SEGMENT = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@-]*$")
_PERMISSION = re.compile(r"^[a-z0-9_*-]{1,64}(:[a-z0-9_*-]{1,64}){1,2}$")
_ROLE = re.compile(r"^[a-zA-Z0-9_.:-]{1,128}$")
_FORBIDDEN_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

_FROZEN = ConfigDict(extra="forbid", frozen=True)


def _check_header_name(name: str) -> str:
    if not _TOKEN.match(name):
        raise ValueError(f"{name!r} is not a header name (RFC 9110 token, at most 64 characters)")
    return name.lower()


class RouteAuth(BaseModel):
    """Who may use a route.

    ``mode``: ``jwt`` (a Keel access token, verified locally against the JWKS), ``api_key``
    (a Keel API key, checked by Keel), ``jwt_or_api_key`` (either), ``none`` (anonymous; roles
    and permissions must then be empty). The caller must hold every role and every permission
    listed. ``audience``, when set, is the ``aud`` a token must carry.
    """

    model_config = _FROZEN

    mode: Literal["jwt", "api_key", "jwt_or_api_key", "none"] = "jwt_or_api_key"
    audience: str | None = Field(default=None, min_length=1, max_length=256)
    roles: list[Annotated[str, Field(pattern=_ROLE.pattern)]] = Field(
        default_factory=list, max_length=32
    )
    permissions: list[str] = Field(default_factory=list, max_length=32)

    @field_validator("permissions")
    @classmethod
    def _permissions_are_well_formed(cls, value: list[str]) -> list[str]:
        for permission in value:
            if not _PERMISSION.match(permission):
                raise ValueError(f"{permission!r} is not a permission ('service:resource:action')")
        return value

    @model_validator(mode="after")
    def _anonymous_needs_no_grants(self) -> RouteAuth:
        if self.mode == "none" and (self.roles or self.permissions):
            raise ValueError("a route with auth mode 'none' cannot require roles or permissions")
        return self


class HeaderTransform(BaseModel):
    """Header changes on the way through: ``remove`` first, then ``set`` (replacing)."""

    model_config = _FROZEN

    set: dict[str, Annotated[str, Field(max_length=8192)]] = Field(
        default_factory=dict, max_length=64
    )
    remove: list[str] = Field(default_factory=list, max_length=64)

    @field_validator("set")
    @classmethod
    def _set_is_well_formed(cls, value: dict[str, str]) -> dict[str, str]:
        checked = {}
        for name, header_value in value.items():
            if _FORBIDDEN_VALUE.search(header_value):
                raise ValueError(f"the value of {name!r} holds a control character")
            checked[_check_header_name(name)] = header_value
        return checked

    @field_validator("remove")
    @classmethod
    def _remove_is_well_formed(cls, value: list[str]) -> list[str]:
        return [_check_header_name(name) for name in value]


class SsrfParameter(BaseModel):
    """A request value holding a URL the service will fetch (a webhook target, an image URL).

    It is checked with the SDK's SSRF guard (``keel_client.http.SSRFPolicy``: every textual
    form of an address, the DNS answers resolved and every one of them checked) before the
    request goes on; a refused URL answers 400 naming the parameter. ``location`` says where
    the value is: a query parameter, a header, a form field, or a JSON body member (``name``
    a dotted path, ``hooks.*.url`` covering each element of a list).
    """

    model_config = _FROZEN

    location: Literal["query", "header", "form", "json"]
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.*-]+$")
    schemes: list[Literal["http", "https"]] = Field(default_factory=lambda: ["https"])  # type: ignore[arg-type]
    allow_hosts: list[str] = Field(default_factory=list, max_length=64)
    required: bool = False


class VersionRoute(BaseModel):
    """Version routing: send a share of a route's requests to another pool.

    With ``header`` and ``value`` the request carrying that header value goes to
    ``upstream`` (``API-Version: 2``); with ``weight`` (1-100) that percentage of the rest
    goes there (a canary). Whatever no rule takes goes to the route's own ``upstream``.
    """

    model_config = _FROZEN

    upstream: str = Field(pattern=NAME_PATTERN)
    header: str | None = None
    value: str | None = Field(default=None, max_length=256)
    weight: int | None = Field(default=None, ge=1, le=100)

    @field_validator("header")
    @classmethod
    def _header_is_a_token(cls, value: str | None) -> str | None:
        return None if value is None else _check_header_name(value)

    @model_validator(mode="after")
    def _one_way_to_select(self) -> VersionRoute:
        by_header = self.header is not None or self.value is not None
        if by_header and (self.header is None or self.value is None):
            raise ValueError("a header rule needs both 'header' and 'value'")
        if by_header == (self.weight is not None):
            raise ValueError("give either 'header' and 'value', or 'weight'")
        return self


class Route(BaseModel):
    """One route: which requests it takes, where they go, and the policy on the way.

    ``path`` with ``match``:

    - ``prefix`` (the default): ``/orders`` takes ``/orders`` and ``/orders/…``, never
      ``/orders-archive``; ``/`` takes everything.
    - ``exact``: only that path.
    - ``pattern``: segments ``{name}`` (one segment) and a last ``{name:path}`` (the rest),
      ``/orders/{id}/items``.

    ``hosts`` empty takes any host; an entry is a host name or ``*.example.com`` (one or more
    labels). ``methods`` empty takes any method. ``strip_prefix`` drops the matched prefix
    before the request goes upstream, and ``rewrite`` puts another in its place.
    ``upstream`` names a pool of the policy; a route without one is enforced only by services'
    middleware (``use_keel_edge``), and the gateway answers it 404.
    """

    model_config = _FROZEN

    name: str = Field(pattern=NAME_PATTERN)
    hosts: list[str] = Field(default_factory=list, max_length=32)
    path: str = Field(default="/", min_length=1, max_length=512)
    match: Literal["prefix", "exact", "pattern"] = "prefix"
    methods: list[str] = Field(default_factory=list, max_length=16)
    upstream: str | None = Field(default=None, pattern=NAME_PATTERN)
    versions: list[VersionRoute] = Field(default_factory=list, max_length=16)
    strip_prefix: bool = False
    rewrite: str | None = Field(default=None, min_length=1, max_length=512)
    auth: RouteAuth = Field(default_factory=RouteAuth)
    rate_limits: list[RateLimit] = Field(default_factory=list, max_length=8)
    cors: CorsPolicy | None = None
    headers: HeaderRules = Field(default_factory=HeaderRules)
    request_headers: HeaderTransform = Field(default_factory=HeaderTransform)
    response_headers: HeaderTransform = Field(default_factory=HeaderTransform)
    ssrf: list[SsrfParameter] = Field(default_factory=list, max_length=16)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=0, le=MAX_BODY_LIMIT)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    retries: RetryPolicy = Field(default_factory=RetryPolicy)
    cache: CachePolicy = Field(default_factory=CachePolicy)

    @field_validator("hosts")
    @classmethod
    def _hosts_are_names(cls, value: list[str]) -> list[str]:
        hosts = []
        for host in value:
            normalized = host.lower().rstrip(".")
            if not _HOST.match(normalized) or len(normalized) > 253:
                raise ValueError(f"{host!r} is not a host name or a '*.domain' wildcard")
            hosts.append(normalized)
        if len(set(hosts)) != len(hosts):
            raise ValueError("a host is listed twice")
        return hosts

    @field_validator("methods")
    @classmethod
    def _methods_are_tokens(cls, value: list[str]) -> list[str]:
        methods = [method.upper() for method in value]
        for method in methods:
            if not _METHOD.match(method):
                raise ValueError(f"{method!r} is not an HTTP method")
        if len(set(methods)) != len(methods):
            raise ValueError("a method is listed twice")
        return methods

    @field_validator("path", "rewrite")
    @classmethod
    def _path_is_absolute(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith("/") or "//" in value or any(c in value for c in "?#\\ "):
            raise ValueError(
                f"{value!r} is not an absolute path (starts with '/', no '//', '?', '#', "
                "backslash or space)"
            )
        return value

    @model_validator(mode="after")
    def _path_fits_match(self) -> Route:
        segments = self.path.strip("/").split("/") if self.path != "/" else []
        for index, segment in enumerate(segments):
            if self.match == "pattern" and segment.startswith("{"):
                if not _SEGMENT_PARAM.match(segment):
                    raise ValueError(f"{segment!r} is not a parameter ('{{name}}')")
                if segment.endswith(":path}") and index != len(segments) - 1:
                    raise ValueError("'{name:path}' may only be the last segment")
            elif not _LITERAL_SEGMENT.match(segment) or segment in ("", ".", ".."):
                raise ValueError(f"{segment!r} is not a path segment")
        if self.match != "prefix" and (self.strip_prefix or self.rewrite):
            raise ValueError("'strip_prefix' and 'rewrite' apply to prefix routes only")
        if self.upstream is None and self.versions:
            raise ValueError("'versions' needs the route's own 'upstream'")
        if sum(rule.weight or 0 for rule in self.versions) > 100:
            raise ValueError("the version weights add up to more than 100")
        names = [limit.name for limit in self.rate_limits]
        if len(set(names)) != len(names):
            raise ValueError("two rate limits of the route have the same name")
        return self


def path_shape(route: Route) -> tuple[str, str]:
    """What two routes must share to take exactly the same paths: the match kind and the
    path with parameter names erased (``/orders/{id}`` and ``/orders/{order}`` are one shape)."""
    path = route.path.rstrip("/") or "/"
    if route.match == "pattern":
        path = re.sub(r"\{[a-z_][a-z0-9_]*:path\}", "{*}", path)
        path = re.sub(r"\{[a-z_][a-z0-9_]*\}", "{}", path)
    return route.match, path


def ambiguous_routes(routes: list[Route]) -> list[tuple[int, int]]:
    """The pairs of routes (by index) that could claim one request with neither winning.

    The matcher prefers an exact host to a wildcard to any host, then ``exact`` to
    ``pattern`` to ``prefix``, then the longer prefix, and between patterns the one with a
    literal segment where the other has a parameter, first difference deciding. So two routes
    tie only when they list a common host (or both list none), have the same path shape, and
    share a method (no methods meaning all).
    """
    # Only routes of one path shape can tie: group by it first, so a policy of a thousand
    # distinct paths costs a thousand dictionary inserts, not half a million comparisons.
    by_shape: dict[tuple[str, str], list[int]] = {}
    for index, route in enumerate(routes):
        by_shape.setdefault(path_shape(route), []).append(index)
    pairs = []
    for indexes in by_shape.values():
        for position, i in enumerate(indexes):
            first = routes[i]
            for j in indexes[position + 1 :]:
                second = routes[j]
                if not _hosts_overlap(first.hosts, second.hosts):
                    continue
                if (
                    first.methods
                    and second.methods
                    and not set(first.methods) & set(second.methods)
                ):
                    continue
                pairs.append((i, j))
    return sorted(pairs)


def _hosts_overlap(first: list[str], second: list[str]) -> bool:
    if not first or not second:
        return not first and not second
    return bool(set(first) & set(second))


#: A place in a policy document: ``("routes", 3, "upstream")``.
Location = tuple[str | int, ...]


def cross_reference_errors(policy: EdgePolicy) -> list[tuple[Location, str]]:
    """What is wrong between the parts of a policy, each at the field it concerns: a name
    used twice, a route naming a pool the policy lacks, two routes that tie
    (:func:`ambiguous_routes`)."""
    errors: list[tuple[Location, str]] = []
    seen_pools: set[str] = set()
    for index, pool in enumerate(policy.upstreams):
        if pool.name in seen_pools:
            errors.append((("upstreams", index, "name"), f"pool {pool.name!r} is defined twice"))
        seen_pools.add(pool.name)
    seen_routes: set[str] = set()
    for index, route in enumerate(policy.routes):
        if route.name in seen_routes:
            errors.append((("routes", index, "name"), f"route {route.name!r} is defined twice"))
        seen_routes.add(route.name)
        if route.upstream is not None and route.upstream not in seen_pools:
            errors.append(
                (("routes", index, "upstream"), f"{route.upstream!r} is not a pool of the policy")
            )
        for rule_index, rule in enumerate(route.versions):
            if rule.upstream not in seen_pools:
                errors.append(
                    (
                        ("routes", index, "versions", rule_index, "upstream"),
                        f"{rule.upstream!r} is not a pool of the policy",
                    )
                )
    for i, j in ambiguous_routes(policy.routes):
        errors.append(
            (
                ("routes", j, "path"),
                f"route {policy.routes[j].name!r} takes the same requests as route "
                f"{policy.routes[i].name!r} with neither more specific (same hosts, path shape "
                "and a common method)",
            )
        )
    return errors


class EdgePolicy(BaseModel):
    """A tenant's whole edge policy: the upstream pools and the routes that use them.

    Validation also checks the parts against each other (:func:`cross_reference_errors`).
    Pass ``context={"cross_checks": False}`` to ``model_validate`` to run those separately
    and get each error at its own location (the server does, for its problem+json).
    """

    model_config = _FROZEN

    upstreams: list[UpstreamPool] = Field(default_factory=list, max_length=MAX_UPSTREAMS)
    routes: list[Route] = Field(default_factory=list, max_length=MAX_ROUTES)

    @model_validator(mode="after")
    def _references_resolve(self, info: ValidationInfo) -> EdgePolicy:
        if isinstance(info.context, dict) and info.context.get("cross_checks") is False:
            return self
        errors = cross_reference_errors(self)
        if errors:
            raise ValueError(
                "; ".join(
                    ".".join(str(part) for part in loc) + f": {message}" for loc, message in errors
                )
            )
        return self
