"""One :class:`UpstreamRuntime` per :class:`UpstreamPool`: its targets, their connection pools
and health, the balancer that chooses between them, and the pool's retry budget.

The gateway app builds one runtime per pool when it loads the routes, ``await start()``s it
(the active health checks run as background tasks) and ``await stop()``s it when the pool is
replaced or the app shuts down. :func:`keel.gateway.proxy.forward.forward` does the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from keel.core.logging import get_logger
from keel_client.edge._upstreams import UpstreamPool, UpstreamTarget

from .balancer import Balancer, new_balancer
from .client import ConnectionPool, Origin
from .health import ActiveHealth, CircuitBreaker, PassiveHealth, run_active_checks
from .retry import RetryBudget

log = get_logger("keel.gateway.proxy")


@dataclass(eq=False)
class TargetRuntime:
    """One target of a pool while the proxy runs."""

    target: UpstreamTarget
    origin: Origin
    connections: ConnectionPool
    passive: PassiveHealth
    breaker: CircuitBreaker
    active: ActiveHealth | None = None
    inflight: int = 0
    _check_task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return self.target.url

    def is_available(self, now: float) -> bool:
        return (
            (self.active is None or self.active.is_healthy)
            and not self.passive.is_ejected(now)
            and self.breaker.allows(now)
        )


class UpstreamRuntime:
    """The live side of an :class:`UpstreamPool`.

    Usage::

        runtime = UpstreamRuntime(pool)
        await runtime.start()
        ...  # forward(scope, receive, send, runtime=runtime, ...)
        await runtime.stop()
    """

    def __init__(
        self,
        pool: UpstreamPool,
        *,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.ssl_context = ssl_context
        self.targets = [self._target_runtime(target) for target in pool.targets]
        self.balancer: Balancer = new_balancer(
            pool.balance,
            [target.url for target in pool.targets],
            [target.weight for target in pool.targets],
        )
        self.retry_budget = RetryBudget()

    def _target_runtime(self, target: UpstreamTarget) -> TargetRuntime:
        origin = Origin.from_url(target.url)
        pool = self.pool
        return TargetRuntime(
            target=target,
            origin=origin,
            connections=ConnectionPool(origin, pool.max_connections_per_target, self.ssl_context),
            passive=PassiveHealth(pool.passive),
            breaker=CircuitBreaker(pool.breaker),
            active=ActiveHealth(pool.health) if pool.health else None,
        )

    async def start(self) -> None:
        """Start the active health checks (if the pool has them)."""
        for target in self.targets:
            if target.active is not None and target._check_task is None:
                target._check_task = asyncio.create_task(
                    run_active_checks(
                        target.origin, target.active, ssl_context=self.ssl_context, clock=self.clock
                    ),
                    name=f"gateway-health {target.url}",
                )

    async def stop(self) -> None:
        """Stop the health checks and close the idle connections (those in use close when
        their exchange ends)."""
        tasks = [target._check_task for target in self.targets if target._check_task]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for target in self.targets:
            target._check_task = None
            target.connections.close()

    def choose(
        self, hash_key: str | None, *, exclude: Collection[TargetRuntime] = ()
    ) -> TargetRuntime | None:
        """A target for the next attempt, or ``None`` when every target is out. ``exclude``
        (the targets a retry already failed on) is honoured while another target is left."""
        now = self.clock()
        targets = self.targets
        if len(targets) == 1:
            # Every balancer picks the only target when it is available (and an excluded
            # one is honoured only while another is left): skip building their inputs.
            only = targets[0]
            return only if only.is_available(now) else None
        available = [target.is_available(now) for target in targets]
        if exclude:
            others = [
                is_available and target not in exclude
                for target, is_available in zip(targets, available, strict=True)
            ]
            if any(others):
                available = others
        index = self.balancer.choose(available, [target.inflight for target in targets], hash_key)
        return None if index is None else targets[index]

    def begin(self, target: TargetRuntime) -> None:
        """A request is being sent to ``target``."""
        target.inflight += 1
        target.breaker.on_send(self.clock())

    def end(self, target: TargetRuntime) -> None:
        """The exchange with ``target`` is over (its response relayed, or it failed)."""
        target.inflight -= 1

    def record(self, target: TargetRuntime, *, is_failure: bool) -> None:
        """The outcome of one attempt, for passive ejection and the breaker."""
        now = self.clock()
        if target.passive.record(is_failure=is_failure, now=now):
            log.warning(
                "gateway.target_ejected",
                pool=self.pool.name,
                target=target.url,
                seconds=self.pool.passive.ejection_seconds,
            )
        change = target.breaker.record(is_failure=is_failure, now=now)
        if change is not None:
            log.warning(
                "gateway.breaker", pool=self.pool.name, target=target.url, state=change.value
            )

    @property
    def connections_opened(self) -> int:
        """Connections opened to the targets so far (keep-alive reuse shows as few)."""
        return sum(target.connections.accepted for target in self.targets)
