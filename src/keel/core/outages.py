"""What Keel does while PostgreSQL or Redis is down, counted and told without flooding.

Each use of a dependency either fails open (carries on without it: the login rate limit
counts in this process, a change is published later or found in the table) or fails closed
(answers 503 with ``Retry-After``). Either way it calls :func:`note_outage`, which

- counts the event in ``keel_dependency_unavailable_total{dependency, use, outcome}``, and
- logs a ``dependency.unavailable`` warning at most once a minute for each
  ``(dependency, use, outcome)``, saying how many it left out since the last one: under load
  an outage would otherwise write a line per request.

Usage::

    try:
        count = await redis.incr(name)
    except RedisError as error:
        note_outage("redis", "rate-limit", error, outcome=Outcome.fail_open)
        count = local.incr(name)

The docs (``docs/operations.md``, "When PostgreSQL or Redis is down") list each use and why it
fails open or closed.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from enum import StrEnum
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from keel.core.logging import get_logger, redact

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

log = get_logger(__name__)

#: At most one warning per ``(dependency, use, outcome)`` in this many seconds.
LOG_INTERVAL_SECONDS = 60.0


class Outcome(StrEnum):
    #: Carried on without the dependency.
    fail_open = "fail_open"
    #: Refused: the caller got 503 with ``Retry-After``.
    fail_closed = "fail_closed"


_Key = tuple[str, str, str]
# Per process, not per app: the publishers of changes and cache invalidations are
# module-level and know no app. Counters only grow, so several apps in one process (tests)
# read the process's total, as Prometheus' process metrics do.
_counts: Counter[_Key] = Counter()
_left_out: Counter[_Key] = Counter()
_last_logged: dict[_Key, float] = {}


#: Set by a caller that reports the failure itself (the ``keel`` command, whose one line of
#: output is the report): the outage is still counted, not logged.
_reported_by_caller: ContextVar[bool] = ContextVar("keel_outage_reported_by_caller", default=False)


@contextmanager
def reported_by_caller() -> Iterator[None]:
    """Within this block an outage is counted but not logged: the caller reports it."""
    token = _reported_by_caller.set(True)
    try:
        yield
    finally:
        _reported_by_caller.reset(token)


def note_outage(dependency: str, use: str, error: BaseException | str, *, outcome: Outcome) -> None:
    """Count one operation that met ``dependency`` down; warn unless warned recently."""
    key = (dependency, use, outcome.value)
    _counts[key] += 1
    if _reported_by_caller.get():
        return
    now = time.monotonic()
    last = _last_logged.get(key)
    if last is not None and now - last < LOG_INTERVAL_SECONDS:
        _left_out[key] += 1
        return
    _last_logged[key] = now
    log.warning(
        "dependency.unavailable",
        dependency=dependency,
        use=use,
        outcome=outcome.value,
        error=describe_error(error),
        left_out=_left_out.pop(key, 0),
    )


def describe_error(error: BaseException | str) -> str:
    """One redacted line: the error's type and the first line of its message."""
    if isinstance(error, str):
        return str(redact(error))
    message = str(error).splitlines()[0][:200] if str(error) else ""
    described = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return str(redact(described))


class OutageCollector(Collector):
    """Exposes the counts of :func:`note_outage` on an app's registry."""

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "keel_dependency_unavailable",
            "Operations that met a dependency down, by dependency, use and outcome "
            "(fail_open: done without it; fail_closed: answered 503).",
            labels=["dependency", "use", "outcome"],
        )
        for (dependency, use, outcome), count in sorted(_counts.items()):
            family.add_metric([dependency, use, outcome], float(count))
        yield family
