"""``keel_client.http``: the resilient HTTP base client every Keel service client is built on.

Example::

    from keel_client.http import BaseAPIClient, BearerToken

    class BillingAPI(BaseAPIClient):
        base_url = "https://billing.internal"

        async def invoice(self, id: str) -> Invoice:
            return await self.get(f"/invoices/{id}", response_model=Invoice)

    async with BillingAPI(auth=BearerToken(token)) as billing:
        await billing.invoice("42")

See ``docs/client/http.md`` for retries, the budget, the breaker, caching, auth, signing,
SSRF protection, errors and metrics.
"""

from keel_client.http._auth import APIKey, BearerToken, ClientCredentials
from keel_client.http._breaker import (
    BreakerPolicy,
    CircuitBreaker,
    CircuitSnapshot,
    CircuitState,
)
from keel_client.http._budget import RetryBudget, RetryBudgetSnapshot
from keel_client.http._cache import AsyncMemoryStorage, HTTPCache, MemoryStorage
from keel_client.http._client import BaseAPIClient
from keel_client.http._core import ClientHealth
from keel_client.http._exceptions import (
    CircuitOpenError,
    ClientError,
    HTTPStatusError,
    KeelHTTPError,
    Problem,
    RequestTimeout,
    ResponseValidationError,
    RetryBudgetExceeded,
    ServerError,
    SignatureVerificationError,
    SSRFBlockedError,
    TransportError,
    parse_problem,
)
from keel_client.http._options import RequestOptions
from keel_client.http._retry import (
    DEFAULT_RETRY_STATUSES,
    IDEMPOTENT_METHODS,
    FailureKind,
    RetryPolicy,
    backoff,
    parse_retry_after,
    should_retry,
    sleep_time,
)
from keel_client.http._signatures import (
    HTTPSignatureAuth,
    SignatureVerifier,
    VerifiedSignature,
)
from keel_client.http._ssrf import (
    SSRFPolicy,
    SSRFSafeTransport,
    SyncSSRFSafeTransport,
    blocked_reason,
    parse_ip_literal,
)
from keel_client.http._sync_client import SyncBaseAPIClient

__all__ = [
    "DEFAULT_RETRY_STATUSES",
    "IDEMPOTENT_METHODS",
    "APIKey",
    "AsyncMemoryStorage",
    "BaseAPIClient",
    "BearerToken",
    "BreakerPolicy",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitSnapshot",
    "CircuitState",
    "ClientCredentials",
    "ClientError",
    "ClientHealth",
    "FailureKind",
    "HTTPCache",
    "HTTPSignatureAuth",
    "HTTPStatusError",
    "KeelHTTPError",
    "MemoryStorage",
    "Problem",
    "RequestOptions",
    "RequestTimeout",
    "ResponseValidationError",
    "RetryBudget",
    "RetryBudgetExceeded",
    "RetryBudgetSnapshot",
    "RetryPolicy",
    "SSRFBlockedError",
    "SSRFPolicy",
    "SSRFSafeTransport",
    "ServerError",
    "SignatureVerificationError",
    "SignatureVerifier",
    "SyncBaseAPIClient",
    "SyncSSRFSafeTransport",
    "TransportError",
    "VerifiedSignature",
    "backoff",
    "blocked_reason",
    "parse_ip_literal",
    "parse_problem",
    "parse_retry_after",
    "should_retry",
    "sleep_time",
]
