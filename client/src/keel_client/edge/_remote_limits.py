"""Rate-limit counts kept by Keel, for a service that runs ``use_keel_edge`` without a Redis.

:class:`KeelLimiterStore` is a :class:`~keel_client.edge._ratelimit.LimiterStore` whose
counters live in Keel (``POST /gateway/v1/ratelimit/hit``, permission
``gateway:ratelimit:hit``): every replica of the service then counts against one shared
limit, as with :class:`RedisLimiterStore`, at the cost of one HTTP round trip per request.
Keel counts under the caller's tenant, so one tenant's keys never touch another's.

The request and answer are the wire models below, shared with the server. A hit is never
retried (a retry could count twice); while Keel cannot be reached or answers an error each
rule's ``fail`` decides, the decision marked ``degraded``, exactly as the Redis store does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from keel_client.edge._ratelimit import RateLimit, RateLimitDecision, _unreachable

if TYPE_CHECKING:  # the HTTP stack is the caller's: the server reads only the wire models
    from keel_client.http import BaseAPIClient

__all__ = [
    "MAX_HITS",
    "MAX_KEY_LENGTH",
    "RATE_LIMIT_HIT_PATH",
    "KeelLimiterStore",
    "RateLimitHit",
    "RateLimitHits",
    "RemoteDecision",
    "RemoteDecisions",
]

logger = logging.getLogger("keel_client.edge")

RATE_LIMIT_HIT_PATH = "/gateway/v1/ratelimit/hit"
#: Rules counted in one call: a route has at most 8 rate limits.
MAX_HITS = 8
#: The longest key accepted (an address, a hashed credential, a header value).
MAX_KEY_LENGTH = 512
#: The most units one call may count (a request's cost).
MAX_COST = 1000

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class RateLimitHit(BaseModel):
    """One rule and the key counted under it."""

    model_config = _FROZEN

    rule: RateLimit
    key: str = Field(min_length=1, max_length=MAX_KEY_LENGTH)


class RateLimitHits(BaseModel):
    """The body of ``POST /gateway/v1/ratelimit/hit``: every rule of one request."""

    model_config = _FROZEN

    hits: list[RateLimitHit] = Field(min_length=1, max_length=MAX_HITS)
    cost: int = Field(default=1, ge=1, le=MAX_COST)


class RemoteDecision(BaseModel):
    """One rule's decision, as :class:`RateLimitDecision` says it (without the rule)."""

    model_config = _FROZEN

    allowed: bool
    remaining: int
    reset_seconds: int
    retry_after: int | None
    degraded: bool = False

    @classmethod
    def of(cls, decision: RateLimitDecision) -> RemoteDecision:
        return cls(
            allowed=decision.allowed,
            remaining=decision.remaining,
            reset_seconds=decision.reset_seconds,
            retry_after=decision.retry_after,
            degraded=decision.degraded,
        )

    def for_rule(self, rule: RateLimit) -> RateLimitDecision:
        return RateLimitDecision(
            allowed=self.allowed,
            rule=rule,
            remaining=self.remaining,
            reset_seconds=self.reset_seconds,
            retry_after=self.retry_after,
            degraded=self.degraded,
        )


class RemoteDecisions(BaseModel):
    """The answer: one decision per hit, in order."""

    model_config = _FROZEN

    decisions: list[RemoteDecision] = Field(max_length=MAX_HITS)


class KeelLimiterStore:
    """A ``LimiterStore`` whose counters Keel keeps (shared by every replica of a service).

    Example::

        api = BaseAPIClient(KEEL_URL, auth=APIKey(key))  # the key holds gateway:ratelimit:hit
        store = KeelLimiterStore(api)
        decision = await store.hit(rule, client_ip)

    While Keel cannot be reached (or answers an error), each rule's ``fail`` decides and Keel
    is not asked again for ``retry_seconds``, so requests do not each wait for a timeout.
    ``deadline`` bounds one call, every attempt included.
    """

    def __init__(
        self, api: BaseAPIClient, *, deadline: float = 2.0, retry_seconds: float = 1.0
    ) -> None:
        self.api = api
        self.deadline = deadline
        self.retry_seconds = retry_seconds
        self._skip_until = 0.0
        self._in_outage = False

    async def hit(self, rule: RateLimit, key: str, *, cost: int = 1) -> RateLimitDecision:
        return (await self.hit_many([(rule, key)], cost=cost))[0]

    async def hit_many(
        self, rules_and_keys: Sequence[tuple[RateLimit, str]], *, cost: int = 1
    ) -> list[RateLimitDecision]:
        """Every rule of one request in one call (at most :data:`MAX_HITS`)."""
        if cost < 1:
            raise ValueError("cost is at least 1")
        if not rules_and_keys:
            return []
        if len(rules_and_keys) > MAX_HITS:
            raise ValueError(f"at most {MAX_HITS} rules are counted in one call")
        if time.monotonic() < self._skip_until:
            return [_unreachable(rule) for rule, _ in rules_and_keys]
        body = RateLimitHits(
            hits=[RateLimitHit(rule=rule, key=key) for rule, key in rules_and_keys], cost=cost
        )
        from keel_client.http import KeelHTTPError

        try:
            answer = await self.api.post(
                RATE_LIMIT_HIT_PATH,
                json=body.model_dump(mode="json"),
                response_model=RemoteDecisions,
                deadline=self.deadline,
                max_retries=0,  # a retry could count the request twice
            )
        except KeelHTTPError as error:
            self._note_outage(error)
            return [_unreachable(rule) for rule, _ in rules_and_keys]
        if len(answer.decisions) != len(rules_and_keys):
            self._note_outage(ValueError("the answer does not match the hits"))
            return [_unreachable(rule) for rule, _ in rules_and_keys]
        self._note_recovery()
        return [
            decision.for_rule(rule)
            for decision, (rule, _) in zip(answer.decisions, rules_and_keys, strict=True)
        ]

    def _note_outage(self, error: Exception) -> None:
        self._skip_until = time.monotonic() + self.retry_seconds
        if not self._in_outage:
            self._in_outage = True
            # The error's type only: its text may carry a key.
            logger.warning(
                "Keel's rate-limit endpoint cannot count (%s): each rule's fail setting "
                "decides until it answers",
                type(error).__name__,
            )

    def _note_recovery(self) -> None:
        if self._in_outage:
            self._in_outage = False
            logger.info("Keel's rate-limit endpoint counts again")
