"""The edge policy: what Keel's gateway enforces at the edge and services enforce inside,
from one definition, with the same code — ``keel_client.edge``.

A service behind no gateway enforces its routes with one line
(``keel_client.fastapi.use_keel_edge(app, keel, service="orders")``); the pieces below are
what that line and the gateway are built from::

    from keel_client import Keel

    async with Keel.from_env() as keel:
        async with keel.edge.client(service="orders") as edge:     # EdgeClient
            found = edge.snapshot.table.match(host, path, method)   # RouteTable

Private modules by concept, behind this curated list: ``_model`` (the policy document:
``EdgePolicy``, ``Route``…), ``_match`` (which route answers), ``_ratelimit`` (rules,
algorithms, memory and Redis stores, the RateLimit fields), ``_remote_limits`` (counts kept
by Keel), ``_headers`` (OWASP security-header profiles), ``_cors``, ``_upstreams`` (pools,
health, breaker, timeouts, retries), ``_caching`` (RFC 9111 policy), ``_identity`` (the
signed ``Keel-Identity`` header and its verifier), ``_enforce`` (the checks of one
request), ``_middleware`` (``EdgeMiddleware``, pure ASGI) and ``_client`` (``EdgeClient``,
the policy kept current). See ``docs/gateway.md`` and ``docs/client/edge.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keel_client._lazy import lazy_names
from keel_client.edge._caching import CachePolicy
from keel_client.edge._cors import Cors, CorsPolicy
from keel_client.edge._headers import HeaderRules, SecurityHeaders
from keel_client.edge._match import MethodMismatch, RouteMatch, RouteTable
from keel_client.edge._model import (
    EdgePolicy,
    HeaderTransform,
    Route,
    RouteAuth,
    SsrfParameter,
    VersionRoute,
)
from keel_client.edge._ratelimit import (
    LimiterStore,
    MemoryLimiterStore,
    RateLimit,
    RateLimitDecision,
    RedisLimiterStore,
)
from keel_client.edge._upstreams import (
    ActiveHealthCheck,
    CircuitBreakerPolicy,
    PassiveHealthCheck,
    RetryPolicy,
    Timeouts,
    UpstreamPool,
    UpstreamTarget,
)

# The pieces that bring an HTTP stack (httpx, and the SSRF guard's resolver) are imported on
# first use: the Keel server reads the policy models without them.
if TYPE_CHECKING:
    from keel_client.edge._client import (
        EdgeChange,
        EdgeClient,
        EdgeError,
        EdgeSnapshot,
        EdgeUnavailable,
    )
    from keel_client.edge._enforce import EdgeAuthenticator, EdgeEnforcer, Refusal, Verdict
    from keel_client.edge._identity import IDENTITY_HEADER, IdentityVerifier, InvalidIdentity
    from keel_client.edge._middleware import EdgeMiddleware
    from keel_client.edge._remote_limits import KeelLimiterStore

__getattr__ = lazy_names(
    __name__,
    {
        "_client": {"EdgeChange", "EdgeClient", "EdgeError", "EdgeSnapshot", "EdgeUnavailable"},
        "_enforce": {"EdgeAuthenticator", "EdgeEnforcer", "Refusal", "Verdict"},
        "_identity": {"IDENTITY_HEADER", "IdentityVerifier", "InvalidIdentity"},
        "_middleware": {"EdgeMiddleware"},
        "_remote_limits": {"KeelLimiterStore"},
    },
)

__all__ = [
    "IDENTITY_HEADER",
    "ActiveHealthCheck",
    "CachePolicy",
    "CircuitBreakerPolicy",
    "Cors",
    "CorsPolicy",
    "EdgeAuthenticator",
    "EdgeChange",
    "EdgeClient",
    "EdgeEnforcer",
    "EdgeError",
    "EdgeMiddleware",
    "EdgePolicy",
    "EdgeSnapshot",
    "EdgeUnavailable",
    "HeaderRules",
    "HeaderTransform",
    "IdentityVerifier",
    "InvalidIdentity",
    "KeelLimiterStore",
    "LimiterStore",
    "MemoryLimiterStore",
    "MethodMismatch",
    "PassiveHealthCheck",
    "RateLimit",
    "RateLimitDecision",
    "RedisLimiterStore",
    "Refusal",
    "RetryPolicy",
    "Route",
    "RouteAuth",
    "RouteMatch",
    "RouteTable",
    "SecurityHeaders",
    "SsrfParameter",
    "Timeouts",
    "UpstreamPool",
    "UpstreamTarget",
    "Verdict",
    "VersionRoute",
]
