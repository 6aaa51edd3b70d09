"""The tenant's edge policy as an nginx configuration (``keel gateway export nginx``).

For a team that keeps nginx at the edge: nginx routes and proxies, and asks Keel, through
``auth_request``, to decide each request of a route with something to decide (a credential,
grants, rate limits, CORS, URL parameters, methods). Keel answers with the code its own
proxy runs (``/gateway/v1/authz/nginx``, :mod:`keel.gateway.authz`) and with the signed
``Keel-Identity`` nginx hands upstream. :func:`render_nginx` is pure: policy in, text out.

The output is for nginx's ``http`` context (``include`` it)::

    upstream keel_<pool> { server host:port weight=…; least_conn | hash … consistent; }
    server {                                  one per set of hosts with the same routes;
        listen …; server_name …;              routes without hosts go to every server, and
        auth_request_set $keel_… …;           alone to the default server
        location = /_keel_authz { internal; proxy_pass <keel>/gateway/v1/authz/nginx; … }
        location @keel_refused { X-Keel-Status mapped back: 429, 503, 404, 405, 413, 400, 204 }
        location /p/ { auth_request /_keel_authz; error_page 403 = @keel_refused; … }
    }

Decisions:

- nginx reads only 2xx, 401 and 403 from ``auth_request``; Keel answers its other refusals
  403 with ``X-Keel-Status`` and ``@keel_refused`` returns that status with the fields Keel
  gave (``Retry-After``, RateLimit, ``Allow``, CORS). An allowed CORS preflight comes back
  the same way as 204 and nginx answers it; the upstream never sees preflights.
- Response headers are nginx's to set, since ``auth_request`` cannot change a response:
  the route's security-header profile and response transform become ``add_header … always``
  and ``proxy_hide_header`` (the OWASP removal list included); Keel's RateLimit and CORS
  fields travel through ``auth_request_set`` variables.
- ``proxy_set_header Keel-Identity $keel_identity`` replaces whatever a client sent (and
  sends nothing for an anonymous caller); a route Keel does not decide clears it.
- Keel decides on ``$request_uri`` as the client sent it, nginx routes on its normalised
  ``$uri``: where they differ (dot segments, ``%2F``, double slashes) Keel refuses with 400,
  so a request never reaches a location under a decision made for another path.
- Locations follow Keel's order: ``=`` (exact) before regex (pattern) before the longest
  prefix; patterns are written most specific first, as nginx takes the first regex that
  matches. A route listing hosts wins over one listing none only through nginx's choice of
  server: with both in one server block, the path decides (Keel prefers the host first).

What nginx cannot express is left out with a ``# not carried over:`` comment naming it:
version routing, response caching, the retry budget, active health checks, the circuit
breaker, URL parameters in a body (``auth_request`` has no body), mixed target schemes or
base paths within one pool.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from keel_client.edge._headers import SecurityHeaders
from keel_client.edge._model import EdgePolicy, Route
from keel_client.edge._upstreams import UpstreamPool

__all__ = ["AUTHZ_LOCATION", "render_nginx"]

#: The internal location nginx sends its ``auth_request`` subrequests to.
AUTHZ_LOCATION = "/_keel_authz"
AUTHZ_PATH = "/gateway/v1/authz/nginx"
REFUSED_LOCATION = "@keel_refused"
INDENT = "    "

#: ``auth_request_set`` variables: what Keel's answer carries to the response.
_VARIABLES: tuple[tuple[str, str], ...] = (
    ("keel_identity", "keel_identity"),
    ("keel_subject", "x_keel_subject"),
    ("keel_tenant", "x_keel_tenant"),
    ("keel_status", "x_keel_status"),
    ("keel_retry_after", "retry_after"),
    ("keel_ratelimit", "ratelimit"),
    ("keel_ratelimit_policy", "ratelimit_policy"),
    ("keel_allow", "allow"),
    ("keel_cors_origin", "access_control_allow_origin"),
    ("keel_cors_credentials", "access_control_allow_credentials"),
    ("keel_cors_methods", "access_control_allow_methods"),
    ("keel_cors_headers", "access_control_allow_headers"),
    ("keel_cors_expose", "access_control_expose_headers"),
    ("keel_cors_max_age", "access_control_max_age"),
    ("keel_cors_private_network", "access_control_allow_private_network"),
    ("keel_vary", "vary"),
)
_RATE_LIMIT_FIELDS = (
    ("RateLimit-Policy", "keel_ratelimit_policy"),
    ("RateLimit", "keel_ratelimit"),
)
_CORS_FIELDS = (
    ("Access-Control-Allow-Origin", "keel_cors_origin"),
    ("Access-Control-Allow-Credentials", "keel_cors_credentials"),
    ("Access-Control-Allow-Methods", "keel_cors_methods"),
    ("Access-Control-Allow-Headers", "keel_cors_headers"),
    ("Access-Control-Expose-Headers", "keel_cors_expose"),
    ("Access-Control-Max-Age", "keel_cors_max_age"),
    ("Access-Control-Allow-Private-Network", "keel_cors_private_network"),
    ("Vary", "keel_vary"),
)
#: The statuses ``@keel_refused`` gives back, with the problem each answers.
_REFUSALS: tuple[tuple[int, str, str], ...] = (
    (400, "bad-request", "Bad request"),
    (404, "not-found", "Not found"),
    (405, "method-not-allowed", "Method not allowed"),
    (413, "payload-too-large", "Payload too large"),
    (429, "rate-limited", "Too many requests"),
    (503, "unavailable", "Service unavailable"),
)
_PLAIN_NAME = re.compile(rb"^[A-Za-z0-9_-]+$")
_RETRY_CONDITIONS = {
    "connect_error": "error",
    "timeout": "timeout",
    "502": "http_502",
    "503": "http_503",
    "504": "http_504",
}


def render_nginx(policy: EdgePolicy, *, keel_url: str, listen: str = "8080") -> str:
    """The nginx configuration (``http`` context) enforcing ``policy`` with Keel at
    ``keel_url``; ``listen`` is every server's ``listen`` parameter (``8080``,
    ``127.0.0.1:8080``)."""
    keel = keel_url.rstrip("/")
    out = [
        "# Generated by `keel gateway export nginx`: the tenant's edge policy, decided by Keel",
        f"# at {keel}{AUTHZ_PATH}. Regenerate it after each policy change.",
        "",
        "# '$' inside generated header values.",
        'geo $keel_dollar { default "$"; }',
        "# Room for the hidden response headers of the security profiles.",
        "proxy_headers_hash_max_size 1024;",
        "proxy_headers_hash_bucket_size 128;",
        "",
    ]
    for pool in policy.upstreams:
        out.extend(_upstream(pool))
        out.append("")
    routes = [route for route in policy.routes if route.upstream is not None]
    for route in policy.routes:
        if route.upstream is None:
            out.append(f"# route {route.name}: no upstream (enforced by services only), left out")
    pools = {pool.name: pool for pool in policy.upstreams}
    for names, server_routes, is_default in _servers(routes):
        out.extend(
            _server(names, server_routes, pools, keel=keel, listen=listen, default=is_default)
        )
        out.append("")
    return "\n".join(out).rstrip() + "\n"


# -- values ------------------------------------------------------------------------------------


def _quote(value: str) -> str:
    """An nginx string: double-quoted, ``\\`` and ``"`` escaped, ``$`` kept literal."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "${keel_dollar}")
    return f'"{escaped}"'


def _duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _variable_name(name: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", name.lower())


# -- upstream pools -------------------------------------------------------------------------------


def _upstream_name(pool: str) -> str:
    return f"keel_{pool}"


def _pool_base(pool: UpstreamPool) -> tuple[str, str, list[str]]:
    """The pool's scheme and common base path, and what cannot be carried over."""
    parts = [urlsplit(target.url) for target in pool.targets]
    schemes = {part.scheme for part in parts}
    bases = {part.path.rstrip("/") for part in parts}
    missing = []
    if len(schemes) > 1:
        missing.append("targets of mixed schemes (all sent as " + sorted(schemes)[0] + ")")
    if len(bases) > 1:
        missing.append("targets with different base paths (none applied)")
    return sorted(schemes)[0], bases.pop() if len(bases) == 1 else "", missing


def _hash_key(hash_on: str) -> str:
    if hash_on == "ip":
        return "$remote_addr"
    if hash_on == "path":
        return "$uri"
    if hash_on == "principal":
        return "$keel_subject"
    kind, _, name = hash_on.partition(":")
    return f"$http_{_variable_name(name)}" if kind == "header" else f"$cookie_{name}"


def _upstream(pool: UpstreamPool) -> list[str]:
    _, _, missing = _pool_base(pool)
    if pool.health is not None:
        missing.append("active health checks")
    missing.append("circuit breaker")
    lines = [f"upstream {_upstream_name(pool.name)} {{"]
    lines.extend(f"{INDENT}# not carried over: {item}" for item in missing)
    if pool.balance == "least_inflight":
        lines.append(f"{INDENT}least_conn;")
    elif pool.balance == "consistent_hash":
        lines.append(f"{INDENT}hash {_hash_key(pool.hash_on)} consistent;")
    passive = pool.passive
    for target in pool.targets:
        part = urlsplit(target.url)
        port = part.port or (443 if part.scheme == "https" else 80)
        host = part.hostname or ""
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines.append(
            f"{INDENT}server {address} weight={target.weight} "
            f"max_fails={passive.consecutive_failures} "
            f"fail_timeout={math.ceil(passive.ejection_seconds)}s "
            f"max_conns={pool.max_connections_per_target};"
        )
    lines.append(f"{INDENT}keepalive 32;")
    lines.append("}")
    return lines


# -- servers -------------------------------------------------------------------------------------


def _servers(routes: list[Route]) -> list[tuple[list[str], list[Route], bool]]:
    """``(server names, routes, is default)``: hosts taking the same routes share a server;
    routes without hosts are in every server and alone in the default one."""
    anywhere = [route for route in routes if not route.hosts]
    by_host: dict[str, list[Route]] = {}
    for route in routes:
        for host in route.hosts:
            by_host.setdefault(host, []).append(route)
    grouped: dict[tuple[str, ...], list[str]] = {}
    for host, host_routes in by_host.items():
        grouped.setdefault(tuple(route.name for route in host_routes), []).append(host)
    servers = []
    for names, hosts in grouped.items():
        own = [route for route in routes if route.name in names]
        servers.append((hosts, _without_shadowed(own, anywhere), False))
    servers.append((["_"], anywhere, True))
    return servers


def _without_shadowed(own: list[Route], anywhere: list[Route]) -> list[Route]:
    """``own`` and the any-host routes whose locations ``own`` does not already hold (the
    route listing the host wins, as in Keel)."""
    taken = {key for route in own for key in _location_keys(route)}
    return own + [route for route in anywhere if not set(_location_keys(route)) & taken]


def _location_keys(route: Route) -> list[str]:
    return [selector for selector, _ in _locations(route)]


def _server(
    names: list[str],
    routes: list[Route],
    pools: dict[str, UpstreamPool],
    *,
    keel: str,
    listen: str,
    default: bool,
) -> list[str]:
    lines = ["server {", f"{INDENT}listen {listen}{' default_server' if default else ''};"]
    lines.append(f"{INDENT}server_name {' '.join(names)};")
    lines.extend(
        f"{INDENT}auth_request_set ${variable} $upstream_http_{field};"
        for variable, field in _VARIABLES
    )
    lines.append("")
    lines.extend(_indent(_authz_location(keel)))
    lines.extend(_indent(_refused_location()))
    owners = _claim_locations(routes)
    claimed_root = "/" in owners
    for route in sorted(routes, key=_location_order):
        for selector, uri_mode in _locations(route):
            lines.append("")
            owner = owners[selector]
            if owner is not route:
                lines.append(
                    f"{INDENT}# route {route.name}: location {selector} is route "
                    f"{owner.name}'s; not carried over: routing by method to another pool"
                    if owner.match == route.match
                    else f"{INDENT}# route {route.name}: location {selector} is the exact "
                    f"route {owner.name}'s, as in Keel"
                )
                continue
            lines.extend(
                _indent(_route_location(route, selector, uri_mode, pools[route.upstream or ""]))
            )
    if not claimed_root:
        lines.append("")
        lines.extend(
            _indent(
                [
                    "# No route takes the rest: 404, as Keel's gateway answers.",
                    "location / {",
                    f"{INDENT}default_type application/problem+json;",
                    f"{INDENT}return 404 '{_problem_body(404, 'not-found', 'Not found')}';",
                    "}",
                ]
            )
        )
    lines.append("}")
    return lines


def _claim_locations(routes: list[Route]) -> dict[str, Route]:
    """Which route writes each location: nginx refuses one written twice. An exact route
    takes ``= /p`` from a prefix route on the same path (it wins in Keel too); routes told
    apart only by their methods share one location, the first route's."""
    owners: dict[str, Route] = {}
    for route in sorted(routes, key=lambda route: route.match != "exact"):
        for selector, _ in _locations(route):
            owners.setdefault(selector, route)
    return owners


def _indent(lines: Iterable[str]) -> list[str]:
    return [f"{INDENT}{line}" if line else "" for line in lines]


def _authz_location(keel: str) -> list[str]:
    return [
        "# The decision: Keel sees the original request's headers, not its body.",
        f"location = {AUTHZ_LOCATION} {{",
        f"{INDENT}internal;",
        f"{INDENT}proxy_pass {keel}{AUTHZ_PATH};",
        f"{INDENT}proxy_pass_request_body off;",
        f'{INDENT}proxy_set_header Content-Length "";',
        f"{INDENT}proxy_set_header X-Original-URI $request_uri;",
        f"{INDENT}proxy_set_header X-Original-Method $request_method;",
        f"{INDENT}proxy_set_header X-Original-Host $host;",
        f"{INDENT}proxy_set_header X-Original-Content-Length $content_length;",
        f"{INDENT}proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        f'{INDENT}proxy_set_header Keel-Identity "";',
        f"{INDENT}proxy_connect_timeout 2s;",
        f"{INDENT}proxy_read_timeout 10s;",
        "}",
        "",
    ]


def _problem_body(status: int, slug: str, title: str) -> str:
    return f'{{"type":"urn:keel:problem:{slug}","title":"{title}","status":{status}}}'


def _refused_location() -> list[str]:
    lines = [
        "# Keel's refusals other than 401 and 403 arrive as 403 + X-Keel-Status.",
        f"location {REFUSED_LOCATION} {{",
        f"{INDENT}default_type application/problem+json;",
        f"{INDENT}add_header Retry-After $keel_retry_after always;",
        f"{INDENT}add_header Allow $keel_allow always;",
    ]
    lines.extend(
        f"{INDENT}add_header {name} ${variable} always;"
        for name, variable in (*_RATE_LIMIT_FIELDS, *_CORS_FIELDS)
    )
    lines.append(f"{INDENT}if ($keel_status = 204) {{ return 204; }}")
    lines.extend(
        f"{INDENT}if ($keel_status = {status}) {{ return {status} "
        f"'{_problem_body(status, slug, title)}'; }}"
        for status, slug, title in _REFUSALS
    )
    lines.append(f"{INDENT}return 403 '{_problem_body(403, 'forbidden', 'Forbidden')}';")
    lines.append("}")
    return lines


# -- routes --------------------------------------------------------------------------------------


def _pattern_regex(path: str) -> str:
    parts = []
    for segment in path.strip("/").split("/"):
        if segment.startswith("{") and segment.endswith(":path}"):
            parts.append(".+")
        elif segment.startswith("{"):
            parts.append("[^/]+")
        else:
            parts.append(re.escape(segment))
    return "^/" + "/".join(parts) + "$"


def _locations(route: Route) -> list[tuple[str, str]]:
    """``(location selector, how the upstream URI is built)`` for ``route``: ``whole``
    (the request's URI), ``prefix`` (the matched prefix replaced) or ``exact-prefix``."""
    path = route.path.rstrip("/") or "/"
    if route.match == "exact":
        return [(f"= {path}", "whole")] + ([(f"= {path}/", "whole")] if path != "/" else [])
    if route.match == "pattern":
        return [(f'~ "{_pattern_regex(path)}"', "whole")]
    if path == "/":
        return [("/", "prefix")]
    return [(f"{path}/", "prefix"), (f"= {path}", "exact-prefix")]


def _location_order(route: Route) -> tuple[object, ...]:
    # Patterns most specific first (nginx takes the first regex that matches).
    if route.match != "pattern":
        return (0,)
    kinds = tuple(
        0 if segment.endswith(":path}") else 1 if segment.startswith("{") else 2
        for segment in route.path.strip("/").split("/")
    )
    return (1, tuple(-kind for kind in kinds), -len(kinds))


def _needs_keel(route: Route) -> bool:
    return bool(
        route.auth.mode != "none"
        or route.rate_limits
        or route.cors is not None
        or route.ssrf
        or route.methods
    )


def _proxy_pass(route: Route, pool: UpstreamPool, uri_mode: str) -> str:
    scheme, base, _ = _pool_base(pool)
    upstream = f"{scheme}://{_upstream_name(pool.name)}"
    replaces = route.match == "prefix" and (route.strip_prefix or route.rewrite)
    if not replaces:
        # No URI: nginx sends the client's URI unchanged; a base path goes in front of it.
        return f"{upstream}{base}$request_uri" if base else upstream
    rewrite = (route.rewrite or "").rstrip("/")
    if uri_mode == "exact-prefix":
        return f"{upstream}{base}{rewrite or '/'}"
    return f"{upstream}{base}{rewrite}/"


def _not_carried(route: Route) -> list[str]:
    missing = []
    if route.versions:
        missing.append("version routing (every request goes to the route's own pool)")
    if route.cache.enabled:
        missing.append("response caching")
    if route.retries.attempts:
        missing.append("the retry budget")
    if any(rule.location in ("json", "form") for rule in route.ssrf):
        missing.append("URL parameters in the body (auth_request sends no body)")
    if route.max_body_bytes == 0:
        missing.append("max_body_bytes 0 (nginx's smallest limit is 1 byte)")
    return missing


def _route_location(route: Route, selector: str, uri_mode: str, pool: UpstreamPool) -> list[str]:
    body = [f"# not carried over: {item}" for item in _not_carried(route)]
    keel_decides = _needs_keel(route)
    if keel_decides:
        body.append(f"auth_request {AUTHZ_LOCATION};")
        body.append(f"error_page 403 = {REFUSED_LOCATION};")
    body.append(f"client_max_body_size {max(1, route.max_body_bytes)};")
    timeouts = route.timeouts
    body.append(f"proxy_connect_timeout {_duration(timeouts.connect_seconds)};")
    body.append(f"proxy_read_timeout {_duration(timeouts.read_seconds)};")
    body.append(f"proxy_send_timeout {_duration(timeouts.write_seconds)};")
    retries = route.retries
    conditions = " ".join(_RETRY_CONDITIONS[condition] for condition in retries.on)
    if retries.attempts and conditions:
        body.append(f"proxy_next_upstream {conditions};")
        body.append(f"proxy_next_upstream_tries {retries.attempts + 1};")
    else:
        body.append("proxy_next_upstream off;")
    body.extend(
        [
            "proxy_http_version 1.1;",
            'proxy_set_header Connection "";',
            "proxy_set_header Host $proxy_host;",
            "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
            "proxy_set_header X-Forwarded-Proto $scheme;",
            "proxy_set_header X-Forwarded-Host $host;",
            # Replaces a client's copy; empty (so not sent) for an anonymous caller.
            "proxy_set_header Keel-Identity " + ("$keel_identity;" if keel_decides else '"";'),
        ]
    )
    transform = route.request_headers
    body.extend(f'proxy_set_header {name} "";' for name in transform.remove)
    body.extend(
        f"proxy_set_header {name} {_quote(value)};" for name, value in transform.set.items()
    )
    body.extend(_response_headers(route))
    body.append(f"proxy_pass {_proxy_pass(route, pool, uri_mode)};")
    return [f"# route {route.name}", f"location {selector} {{", *_indent(body), "}"]


def _response_headers(route: Route) -> list[str]:
    security = SecurityHeaders(route.headers)
    hidden = set(security.dropped)
    hidden |= {name.encode() for name in route.response_headers.remove}
    hidden |= {name.encode() for name in route.response_headers.set}
    added: dict[str, str] = {
        name.decode("latin-1"): value.decode("latin-1") for name, value in security.added
    }
    added.update(route.response_headers.set)
    if route.cors is not None:
        hidden |= {name.lower().encode() for name, _ in _CORS_FIELDS if name != "Vary"}
    lines = [
        f"proxy_hide_header {name.decode('latin-1')};"
        for name in sorted(hidden)
        if _PLAIN_NAME.match(name)  # OWASP's list holds a '$wsep' no server sends
    ]
    lines.extend(f"add_header {name} {_quote(value)} always;" for name, value in added.items())
    if route.rate_limits:
        lines.extend(
            f"add_header {name} ${variable} always;" for name, variable in _RATE_LIMIT_FIELDS
        )
    if route.cors is not None:
        lines.extend(f"add_header {name} ${variable} always;" for name, variable in _CORS_FIELDS)
    return lines
