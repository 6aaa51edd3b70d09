"""Edge rate limits: the rule model, the three algorithms, their stores and response fields.

One engine for the gateway's proxy and for services' ``use_keel_edge`` middleware, so a
route's limit means the same wherever it is enforced. A route carries up to eight
:class:`RateLimit` rules; each request is counted under each rule by a :class:`LimiterStore`
and the decisions are folded by :func:`combine` and written out by :func:`rate_limit_headers`.

Algorithms (all counted in microseconds, so every store does the same arithmetic):

- ``fixed_window``: ``limit`` hits per window of ``period_seconds`` aligned on the clock.
- ``sliding_window``: Kong's weighted two-window form. The count is the current window's hits
  plus the previous window's hits times the share of the previous window still inside the
  sliding period: ``previous * (period - elapsed) / period + current``. Two integers per key,
  and no burst of twice the limit across a window boundary as a fixed window allows.
- ``token_bucket``: the generic cell rate algorithm (GCRA, ITU-T I.371): one timestamp per key,
  the theoretical arrival time (TAT). A bucket of ``burst`` tokens refilled at
  ``limit / period_seconds``; a hit of cost ``n`` is allowed while
  ``max(TAT, now) + n * interval - burst * interval <= now``.

Stores:

- :class:`MemoryLimiterStore`: this process only (the embedded default), monotonic clock,
  bounded memory. No locks: each hit runs to completion without awaiting, on one event loop.
- :class:`RedisLimiterStore`: every replica shares one count. One Lua script per algorithm,
  run with ``EVALSHA`` (``EVAL`` on ``NOSCRIPT``), so each decision is one atomic round trip
  and reads Redis' own clock (``TIME``), on which replicas agree. Needs ``redis`` (redis-py
  5 or later: ``pip install redis``); ``keel_client`` does not depend on it.

Usage::

    from keel_client.edge._ratelimit import (
        MemoryLimiterStore, RateLimit, combine, rate_limit_headers,
    )

    rules = [RateLimit(name="burst", limit=20, period_seconds=1),
             RateLimit(name="hourly", limit=1000, period_seconds=3600)]
    store = MemoryLimiterStore()
    decisions = await store.hit_many([(rule, client_ip) for rule in rules])
    decision = combine(decisions)
    headers = rate_limit_headers(decisions)   # ratelimit-policy, ratelimit, retry-after
    if not decision.allowed:
        ...  # 429 (or 503 when a fail-closed rule's store is unreachable)
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "MAX_RATE_PER_SECOND",
    "LimiterStore",
    "MemoryLimiterStore",
    "RateLimit",
    "RateLimitDecision",
    "RedisLimiterStore",
    "combine",
    "rate_limit_headers",
]

logger = logging.getLogger("keel_client.edge")

#: The fastest rate a rule may state (``limit / period_seconds``): ten million a second is past
#: any one route's traffic, so a larger figure is a typo (extra zeros, or a period in the
#: wrong unit) rather than a limit. The slowest is one hit a year (``limit >= 1``,
#: ``period_seconds <= 31_536_000``), which is not absurd, only strict.
MAX_RATE_PER_SECOND: Final = 10_000_000
MAX_LIMIT: Final = 1_000_000_000
MAX_PERIOD_SECONDS: Final = 31_536_000

_MICROS: Final = 1_000_000
_KEY_KINDS: Final = ("ip", "principal", "api_key", "route")
#: RFC 9110 token characters, as a header field name must be.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")

Algorithm = Literal["fixed_window", "sliding_window", "token_bucket"]


class RateLimit(BaseModel):
    """One rate-limit rule of a route.

    ``key`` says what is counted apart: ``ip`` (the client address), ``principal`` (the
    verified caller), ``api_key``, ``route`` (everyone together), or ``header:<Name>`` (the
    value of that request header; the name is kept lower-cased). ``fail`` says what happens
    while the shared store (Redis) is unreachable: ``open`` lets the request through (its
    decision marked ``degraded``), ``closed`` refuses it with 503.

    Example::

        RateLimit(name="login", algorithm="token_bucket", limit=5, period_seconds=60,
                  burst=10, key="ip", fail="closed")
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    algorithm: Algorithm = "sliding_window"
    # The period first: the limit's check reads it (validators see the fields before theirs).
    period_seconds: int = Field(ge=1, le=MAX_PERIOD_SECONDS)
    limit: int = Field(ge=1, le=MAX_LIMIT)
    burst: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    key: str = "ip"
    fail: Literal["open", "closed"] = "open"

    @field_validator("limit")
    @classmethod
    def _rate_is_plausible(cls, limit: int, info: ValidationInfo) -> int:
        period = info.data.get("period_seconds")
        if period is not None and limit > MAX_RATE_PER_SECOND * period:
            raise ValueError(
                f"{limit} per {period} s is more than {MAX_RATE_PER_SECOND:,} a second: "
                "a smaller limit or a longer period"
            )
        return limit

    @field_validator("burst")
    @classmethod
    def _burst_only_for_token_bucket(cls, burst: int | None, info: ValidationInfo) -> int | None:
        if burst is not None and info.data.get("algorithm", "sliding_window") != "token_bucket":
            raise ValueError("burst applies to the token_bucket algorithm only")
        return burst

    @field_validator("key")
    @classmethod
    def _known_key(cls, key: str) -> str:
        if key in _KEY_KINDS:
            return key
        kind, _, header = key.partition(":")
        if kind == "header" and _HEADER_NAME.match(header):
            return f"header:{header.lower()}"
        raise ValueError(
            "key is one of ip, principal, api_key, route or header:<Header-Name> "
            "(a header name of at most 64 token characters)"
        )

    @property
    def capacity(self) -> int:
        """Hits allowed at once from rest: ``burst`` for a token bucket, else ``limit``."""
        return self.burst if self.burst is not None else self.limit

    @property
    def header_name(self) -> str | None:
        """The lower-cased request header counted apart, for ``key="header:<Name>"``."""
        return self.key.removeprefix("header:") if self.key.startswith("header:") else None


@dataclass(frozen=True, slots=True)
class RateLimitDecision:
    """What one rule says about one request.

    ``remaining`` is what the rule would still allow now; ``reset_seconds`` the whole seconds
    until its quota is whole again if nothing more is counted; ``retry_after`` (refused only)
    the whole seconds, at least 1, until a request of the same cost would be allowed.
    ``degraded`` means the store was unreachable and the rule's ``fail`` decided.
    """

    allowed: bool
    rule: RateLimit
    remaining: int
    reset_seconds: int
    retry_after: int | None
    degraded: bool = False


def combine(decisions: Sequence[RateLimitDecision]) -> RateLimitDecision:
    """One decision for a request counted under several rules.

    Refused if any rule refused (the one asking the longest wait, so retrying then passes
    every refusing rule); otherwise the rule with the fewest remaining. ``degraded`` if any
    decision was.
    """
    if not decisions:
        raise ValueError("combine needs at least one decision")
    refused = [decision for decision in decisions if not decision.allowed]
    if refused:
        chosen = max(refused, key=lambda decision: decision.retry_after or 0)
    else:
        chosen = min(decisions, key=lambda decision: decision.remaining)
    degraded = any(decision.degraded for decision in decisions)
    return chosen if chosen.degraded == degraded else replace(chosen, degraded=degraded)


# Response fields ----------------------------------------------------------------------------
#
# draft-ietf-httpapi-ratelimit-headers-11 (May 2026), sections 3 and 4: both fields are
# Structured Field Lists whose items are Strings naming a policy. ``RateLimit-Policy`` items
# carry ``q`` (the quota) and ``w`` (the window in seconds); ``RateLimit`` items carry ``r``
# (the available quota) and ``t`` (the effective window: seconds within which no more than
# ``r`` may be used). Section 6: Retry-After must not point earlier than the end of the
# effective window, so a refused rule's ``t`` is its ``retry_after``. Implementation
# parameters take a vendor prefix (section 3.1): a bucket larger than its rate is
# ``keel-burst``. The parameter names are kept here alone, as the draft may still rename
# them: -12 (20 November 2026) is out, and its editors' copy of August 2026 (pull request
# 166 of ietf-wg-httpapi/ratelimit-headers) renames ``r`` to ``a`` and ``t`` to ``w``; -11 is
# the latest text read for this module.
_QUOTA, _WINDOW, _AVAILABLE, _EFFECTIVE_WINDOW, _BURST = "q", "w", "r", "t", "keel-burst"


def _policy_item(rule: RateLimit) -> str:
    # The name's pattern ([a-z0-9_-]) needs no escaping inside an sf-string.
    item = f'"{rule.name}";{_QUOTA}={rule.limit};{_WINDOW}={rule.period_seconds}'
    if rule.burst is not None and rule.burst != rule.limit:
        item += f";{_BURST}={rule.burst}"
    return item


def _limit_item(decision: RateLimitDecision) -> str:
    window = decision.reset_seconds if decision.allowed else decision.retry_after
    return f'"{decision.rule.name}";{_AVAILABLE}={decision.remaining};{_EFFECTIVE_WINDOW}={window}'


def rate_limit_headers(decisions: Sequence[RateLimitDecision]) -> list[tuple[bytes, bytes]]:
    """The ``ratelimit-policy``, ``ratelimit`` and (when refused) ``retry-after`` fields.

    Raw ASGI header pairs. A degraded decision's rule is named in the policy but given no
    service limit: its count is unknown. ``retry-after`` is the longest wait of the refusing
    rules.
    """
    if not decisions:
        return []
    headers = [
        (b"ratelimit-policy", ", ".join(_policy_item(d.rule) for d in decisions).encode()),
    ]
    limits = [_limit_item(d) for d in decisions if not d.degraded]
    if limits:
        headers.append((b"ratelimit", ", ".join(limits).encode()))
    waits = [d.retry_after or 1 for d in decisions if not d.allowed]
    if waits:
        headers.append((b"retry-after", str(max(waits)).encode()))
    return headers


# The algorithms, in integer microseconds ------------------------------------------------------
#
# Each step takes the key's stored state (None when absent) and returns the new state (None:
# unchanged) with the raw outcome ``(allowed, remaining, reset_us, retry_us)``. The Lua
# scripts below are the same arithmetic, run inside Redis.

_Outcome = tuple[bool, int, int, int]


def _fixed_window_step(
    state: tuple[int, int] | None, now: int, period: int, limit: int, cost: int
) -> tuple[tuple[int, int] | None, _Outcome]:
    index = now // period
    count = state[1] if state is not None and state[0] == index else 0
    reset = (index + 1) * period - now
    if count + cost > limit:
        return None, (False, limit - count, reset, reset)
    count += cost
    return (index, count), (True, limit - count, reset, 0)


def _sliding_window_wait(
    previous: int, current: int, elapsed: int, period: int, limit: int, cost: int
) -> int:
    """Microseconds until ``previous * (period - e) / period + current + cost <= limit``."""
    room = limit - cost - current
    if room >= 0 and previous > 0:  # the previous window's share fades enough in this one
        return max(1, math.ceil(period * (1 - room / previous)) - elapsed)
    if limit - cost < 0:  # a cost above the limit never passes; say the whole quota's time
        return 2 * period - elapsed
    # Only in the next window, where this window's hits are the fading previous ones.
    into_next = math.ceil(period * (1 - (limit - cost) / current)) if current else 0
    return period - elapsed + into_next


def _sliding_window_step(
    state: tuple[int, int, int] | None, now: int, period: int, limit: int, cost: int
) -> tuple[tuple[int, int, int] | None, _Outcome]:
    index = now // period
    current = previous = 0
    if state is not None and state[0] == index:
        current, previous = state[1], state[2]
    elif state is not None and state[0] == index - 1:
        previous = state[1]
    elapsed = now - index * period
    weighted = previous * (period - elapsed) / period + current
    if weighted + cost > limit:
        reset = 2 * period - elapsed if current else period - elapsed
        wait = _sliding_window_wait(previous, current, elapsed, period, limit, cost)
        return None, (False, math.floor(limit - weighted), reset, wait)
    current += cost
    reset = 2 * period - elapsed
    return (index, current, previous), (True, math.floor(limit - weighted - cost), reset, 0)


def _token_bucket_step(
    tat: int | None, now: int, interval: float, burst: int, cost: int
) -> tuple[int | None, _Outcome]:
    start = max(tat or 0, now)
    capacity = burst * interval
    new_tat = start + cost * interval
    allow_at = new_tat - capacity
    if allow_at > now:
        remaining = math.floor((capacity - (start - now)) / interval + 1e-9)
        return None, (False, remaining, math.ceil(start - now), math.ceil(allow_at - now))
    remaining = math.floor((capacity - (new_tat - now)) / interval + 1e-9)
    return math.ceil(new_tat), (True, remaining, math.ceil(new_tat - now), 0)


def _decision(rule: RateLimit, outcome: Sequence[int]) -> RateLimitDecision:
    allowed, remaining, reset_us, retry_us = (int(value) for value in outcome)
    return RateLimitDecision(
        allowed=bool(allowed),
        rule=rule,
        remaining=max(0, min(remaining, rule.capacity)),
        reset_seconds=max(0, -(-reset_us // _MICROS)),
        retry_after=None if allowed else max(1, -(-retry_us // _MICROS)),
    )


def _unreachable(rule: RateLimit) -> RateLimitDecision:
    """The rule's ``fail`` answer while its store is unreachable."""
    if rule.fail == "open":
        return RateLimitDecision(True, rule, rule.capacity, rule.period_seconds, None, True)
    return RateLimitDecision(False, rule, 0, 1, 1, True)


class LimiterStore(Protocol):
    """Where rate-limit counts live: this process or a shared Redis."""

    async def hit(self, rule: RateLimit, key: str, *, cost: int = 1) -> RateLimitDecision:
        """Count ``cost`` units of ``key`` under ``rule`` if it allows them; say what it says."""
        ...

    async def hit_many(
        self, rules_and_keys: Sequence[tuple[RateLimit, str]], *, cost: int = 1
    ) -> list[RateLimitDecision]:
        """:meth:`hit` for each rule of one request, in order."""
        ...


# In this process --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    state: Any
    expires: int  # monotonic microseconds after which the state no longer matters


class MemoryLimiterStore:
    """Counts in this process only: the embedded default's single process.

    Memory is bounded: a key's state is dropped once it no longer matters (a window past,
    a bucket full again), and past ``max_keys`` the expired ones are swept and, if the
    limit is still reached, the oldest tenth is dropped (forgetting those counts, which
    errs towards allowing).

    Example::

        store = MemoryLimiterStore()
        decision = await store.hit(RateLimit(name="api", limit=100, period_seconds=60), ip)
    """

    def __init__(self, *, max_keys: int = 100_000) -> None:
        self.max_keys = max_keys
        self._entries: dict[tuple[str, str, int, str], _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def hit(self, rule: RateLimit, key: str, *, cost: int = 1) -> RateLimitDecision:
        return self.hit_now(rule, key, cost=cost)

    async def hit_many(
        self, rules_and_keys: Sequence[tuple[RateLimit, str]], *, cost: int = 1
    ) -> list[RateLimitDecision]:
        return [self.hit_now(rule, key, cost=cost) for rule, key in rules_and_keys]

    def hit_now(self, rule: RateLimit, key: str, *, cost: int = 1) -> RateLimitDecision:
        """:meth:`hit` without awaiting: for synchronous callers on the loop's thread."""
        if cost < 1:
            raise ValueError("cost is at least 1")
        now = time.monotonic_ns() // 1000
        slot = (rule.name, rule.algorithm, rule.period_seconds, key)
        entry = self._entries.get(slot)
        state = entry.state if entry is not None and entry.expires > now else None
        period = rule.period_seconds * _MICROS
        new_state: Any
        if rule.algorithm == "fixed_window":
            new_state, outcome = _fixed_window_step(state, now, period, rule.limit, cost)
        elif rule.algorithm == "sliding_window":
            new_state, outcome = _sliding_window_step(state, now, period, rule.limit, cost)
        else:
            interval = period / rule.limit
            new_state, outcome = _token_bucket_step(state, now, interval, rule.capacity, cost)
        if new_state is not None:
            self._store(slot, new_state, expires=now + outcome[2], now=now)
        return _decision(rule, outcome)

    def _store(
        self, slot: tuple[str, str, int, str], state: Any, *, expires: int, now: int
    ) -> None:
        if slot not in self._entries and len(self._entries) >= self.max_keys:
            self._make_room(now)
        self._entries[slot] = _Entry(state, expires)

    def _make_room(self, now: int) -> None:
        self._entries = {s: e for s, e in self._entries.items() if e.expires > now}
        if len(self._entries) >= self.max_keys:
            # Still full of live counts: drop the oldest tenth (dicts keep insertion order).
            drop = max(1, self.max_keys // 10)
            for slot in list(self._entries)[:drop]:
                del self._entries[slot]


# In Redis -----------------------------------------------------------------------------------------
#
# Each script: KEYS[1] the rule's key; ARGV the rule's figures and the cost; replies the
# decision's figures as one status line (measured: a four-item array costs redis-py's
# pure-Python parser five reads, a status line one), rounded as :func:`_decision` does.
# Times are Redis' own (TIME), in microseconds; state sits in one key per (rule, client),
# which expires once it no longer matters.
# Integers pass through string.format('%d'): tostring() would print 14 digits and lose a
# microsecond timestamp's last two.

_LUA_NOW = """
-- "allowed remaining reset_seconds retry_after": whole seconds rounded up, as the decision
-- holds them, and remaining within 0 .. capacity.
local function reply(capacity, allowed, remaining, reset, retry)
  remaining = math.max(0, math.min(remaining, capacity))
  reset = math.max(0, math.ceil(reset / 1000000))
  if allowed == 1 then retry = 0 else retry = math.max(1, math.ceil(retry / 1000000)) end
  return redis.status_reply(string.format('%d %d %d %d', allowed, remaining, reset, retry))
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
"""

_FIXED_WINDOW_LUA = (
    _LUA_NOW
    + """
local period, limit, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local index = math.floor(now / period)
local state = redis.call('HMGET', KEYS[1], 'w', 'c')
local count = 0
if tonumber(state[1]) == index then count = tonumber(state[2]) end
local reset = (index + 1) * period - now
if count + cost > limit then
  return reply(limit, 0, limit - count, reset, reset)
end
count = count + cost
redis.call('HSET', KEYS[1], 'w', string.format('%d', index), 'c', string.format('%d', count))
redis.call('PEXPIRE', KEYS[1], math.ceil(reset / 1000) + 1000)
return reply(limit, 1, limit - count, reset, 0)
"""
)

_SLIDING_WINDOW_LUA = (
    _LUA_NOW
    + """
local period, limit, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local index = math.floor(now / period)
local state = redis.call('HMGET', KEYS[1], 'w', 'c', 'p')
local window = tonumber(state[1])
local current, previous = 0, 0
if window == index then
  current, previous = tonumber(state[2]), tonumber(state[3])
elseif window == index - 1 then
  previous = tonumber(state[2])
end
local elapsed = now - index * period
local weighted = previous * (period - elapsed) / period + current
if weighted + cost > limit then
  local reset = period - elapsed
  if current > 0 then reset = 2 * period - elapsed end
  local room = limit - cost - current
  local wait
  if room >= 0 and previous > 0 then
    wait = math.max(1, math.ceil(period * (1 - room / previous)) - elapsed)
  elseif limit - cost < 0 then
    wait = 2 * period - elapsed
  else
    local into_next = 0
    if current > 0 then into_next = math.ceil(period * (1 - (limit - cost) / current)) end
    wait = period - elapsed + into_next
  end
  return reply(limit, 0, math.floor(limit - weighted), reset, wait)
end
current = current + cost
redis.call('HSET', KEYS[1], 'w', string.format('%d', index),
  'c', string.format('%d', current), 'p', string.format('%d', previous))
redis.call('PEXPIRE', KEYS[1], math.ceil((2 * period - elapsed) / 1000) + 1000)
return reply(limit, 1, math.floor(limit - weighted - cost), 2 * period - elapsed, 0)
"""
)

_TOKEN_BUCKET_LUA = (
    _LUA_NOW
    + """
local interval, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local start = tonumber(redis.call('GET', KEYS[1]) or 0)
if start < now then start = now end
local capacity = burst * interval
local new_tat = start + cost * interval
local allow_at = new_tat - capacity
if allow_at > now then
  local remaining = math.floor((capacity - (start - now)) / interval + 1e-9)
  return reply(burst, 0, remaining, math.ceil(start - now), math.ceil(allow_at - now))
end
local remaining = math.floor((capacity - (new_tat - now)) / interval + 1e-9)
local reset = math.ceil(new_tat - now)
redis.call('SET', KEYS[1], string.format('%d', math.ceil(new_tat)),
  'PX', string.format('%d', math.ceil(reset / 1000) + 1000))
return reply(burst, 1, remaining, reset, 0)
"""
)


@dataclass(frozen=True, slots=True)
class _Script:
    source: str
    sha: str

    @classmethod
    def of(cls, source: str) -> _Script:
        return cls(source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


_SCRIPTS: Final[dict[str, _Script]] = {
    "fixed_window": _Script.of(_FIXED_WINDOW_LUA),
    "sliding_window": _Script.of(_SLIDING_WINDOW_LUA),
    "token_bucket": _Script.of(_TOKEN_BUCKET_LUA),
}


_Command = tuple[_Script, tuple[bytes | str, ...]]


def redis_key(prefix: str, rule: RateLimit, key: str) -> str:
    """The Redis key of ``key`` under ``rule``: bounded, and safe for any ``key``.

    The client's value (an address, or a header anyone can send: 10 kB, ``*``, newlines,
    braces) is never written into the key: a 128-bit BLAKE2b digest of it and the rule's
    algorithm and period stands for it, so the key is short, printable and collides with no
    other. The digest sits in a hash tag (``{…}``), so a Redis Cluster keeps it in one slot.
    """
    digest = hashlib.blake2b(
        f"{rule.algorithm}\x00{rule.period_seconds}\x00{key}".encode(errors="surrogatepass"),
        digest_size=16,
    ).hexdigest()
    return f"{prefix}{rule.name}:{{{digest}}}"


@functools.lru_cache(maxsize=1024)
def _arguments(rule: RateLimit, cost: int) -> tuple[bytes, ...]:
    """The script's ``ARGV``, encoded once per rule and cost (redis-py encodes what it is
    given on every call)."""
    period = rule.period_seconds * _MICROS
    if rule.algorithm == "token_bucket":
        # The interval may be fractional (60 s / 7); repr keeps every digit Lua can read.
        figures: tuple[object, ...] = (repr(period / rule.limit), rule.capacity, cost)
    else:
        figures = (period, rule.limit, cost)
    return tuple(str(figure).encode() for figure in figures)


def _decision_of_reply(rule: RateLimit, reply: bytes | str) -> RateLimitDecision:
    """The decision a script's status line states (its figures already in seconds)."""
    allowed, remaining, reset_seconds, retry_after = reply.split()
    if allowed in (b"1", "1"):
        return RateLimitDecision(True, rule, int(remaining), int(reset_seconds), None)
    return RateLimitDecision(False, rule, int(remaining), int(reset_seconds), int(retry_after))


class RedisLimiterStore:
    """Counts in Redis, so every replica enforces one shared limit; one round trip each.

    Decisions asked for while a round trip is under way wait for the next one and go
    together, as one pipeline of ``EVALSHA`` (``coalesce=False`` sends each on its own):
    each decision still costs one round trip of latency, but a busy gateway pays redis-py's
    per-command cost (a send, a pool checkout) once per batch instead of once per request.
    The rules of one request (:meth:`hit_many`) always go in one round trip.

    While Redis is unreachable (refused, reset, or silent past the client's socket timeout)
    each rule's ``fail`` decides, marked ``degraded``; Redis is not asked again for
    ``retry_seconds``, so requests do not each wait for the timeout. One warning is logged
    when an outage starts and one line when it ends; keys are never logged.

    Give the client short timeouts and no retries: a decision waits for them when Redis
    goes silent, and redis-py (6 and later) by default retries a failed connection three
    times with backoff, seconds before the rule's ``fail`` can answer. Use one store from
    one event loop.

    Example::

        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        client = redis.Redis.from_url(
            url, socket_connect_timeout=0.5, socket_timeout=0.5, retry=Retry(NoBackoff(), 0)
        )
        store = RedisLimiterStore(client)
        decision = await store.hit(rule, client_ip)
    """

    #: At most this many decisions share one round trip (a bound on one batch's latency).
    MAX_BATCH = 256

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "keel:rl:",
        retry_seconds: float = 1.0,
        coalesce: bool = True,
    ) -> None:
        # Imported here: keel_client does not depend on redis, only this store needs it.
        from redis.exceptions import ConnectionError, NoScriptError, TimeoutError

        self._redis: Any = redis  # redis-py's commands are untyped
        self.prefix = prefix
        self.retry_seconds = retry_seconds
        self.coalesce = coalesce
        self._no_script: type[Exception] = NoScriptError
        # OSError covers sockets failing under redis-py's own wrapping (and TimeoutError).
        self._unreachable: tuple[type[Exception], ...] = (ConnectionError, TimeoutError, OSError)
        self._skip_until = 0.0
        self._in_outage = False
        self._queue: list[tuple[_Command, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def hit(self, rule: RateLimit, key: str, *, cost: int = 1) -> RateLimitDecision:
        if cost < 1:
            raise ValueError("cost is at least 1")
        if time.monotonic() < self._skip_until:
            return _unreachable(rule)
        command = self._command(rule, key, cost)
        try:
            if self.coalesce:
                reply = await self._submit(command)
            else:
                (reply,) = await self._run([command])
        except self._unreachable as error:
            self._note_outage(error)
            return _unreachable(rule)
        self._note_recovery()
        return _decision_of_reply(rule, reply)

    async def hit_many(
        self, rules_and_keys: Sequence[tuple[RateLimit, str]], *, cost: int = 1
    ) -> list[RateLimitDecision]:
        """Every rule of one request in one round trip."""
        if self.coalesce or len(rules_and_keys) < 2:
            # Submitted in one go, they leave in one batch.
            return list(
                await asyncio.gather(
                    *(self.hit(rule, key, cost=cost) for rule, key in rules_and_keys)
                )
            )
        if cost < 1:
            raise ValueError("cost is at least 1")
        if time.monotonic() < self._skip_until:
            return [_unreachable(rule) for rule, _ in rules_and_keys]
        commands = [self._command(rule, key, cost) for rule, key in rules_and_keys]
        try:
            replies = await self._run(commands)
        except self._unreachable as error:
            self._note_outage(error)
            return [_unreachable(rule) for rule, _ in rules_and_keys]
        self._note_recovery()
        return [
            _decision_of_reply(rule, reply)
            for (rule, _), reply in zip(rules_and_keys, replies, strict=True)
        ]

    def _command(self, rule: RateLimit, key: str, cost: int) -> _Command:
        script = _SCRIPTS[rule.algorithm]
        return script, (b"1", redis_key(self.prefix, rule, key), *_arguments(rule, cost))

    def _submit(self, command: _Command) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((command, future))
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return future

    async def _flush(self) -> None:
        """Send what has queued, one pipeline at a time, until nothing is left."""
        try:
            while self._queue:
                batch = self._queue[: self.MAX_BATCH]
                del self._queue[: self.MAX_BATCH]
                try:
                    replies = await self._run([command for command, _ in batch])
                except Exception as error:  # each caller decides what it means
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for (_, future), reply in zip(batch, replies, strict=True):
                    if not future.done():  # a caller that gave up is skipped
                        future.set_result(reply)
        finally:
            self._flusher = None

    async def _run(self, commands: list[_Command]) -> list[Any]:
        """One round trip: a pipeline of ``EVALSHA``; a second (``EVAL``) only for the
        scripts Redis did not have (after a restart or ``SCRIPT FLUSH``)."""
        if len(commands) == 1:  # a pipeline's own cost buys nothing for one command
            script, args = commands[0]
            try:
                return [await self._redis.execute_command("EVALSHA", script.sha, *args)]
            except self._no_script:
                return [await self._redis.execute_command("EVAL", script.source, *args)]
        pipe = self._redis.pipeline(transaction=False)
        for script, args in commands:
            pipe.execute_command("EVALSHA", script.sha, *args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, self._no_script)]
        if missing:
            pipe = self._redis.pipeline(transaction=False)
            for index in missing:
                script, args = commands[index]
                pipe.execute_command("EVAL", script.source, *args)
            for index, reply in zip(missing, await pipe.execute(), strict=True):
                replies[index] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _note_outage(self, error: Exception) -> None:
        self._skip_until = time.monotonic() + self.retry_seconds
        if not self._in_outage:
            self._in_outage = True
            # The error's type only: its text may carry the command, and so a client's key.
            logger.warning(
                "rate-limit store unreachable (%s): each rule's fail setting decides until "
                "it answers",
                type(error).__name__,
            )

    def _note_recovery(self) -> None:
        if self._in_outage:
            self._in_outage = False
            logger.info("rate-limit store reachable again")
