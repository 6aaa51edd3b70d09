"""Failover across a channel's ordered providers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TypeVar

from keel.core.logging import get_logger
from keel.notify.providers.base import (
    Attempt,
    ErrorKind,
    FailoverExhausted,
    Provider,
    ProviderError,
    Sent,
)

log = get_logger(__name__)

PayloadT = TypeVar("PayloadT")


def moves_on(kind: ErrorKind) -> bool:
    """Whether a failure of this kind makes the next provider worth trying. A rejected
    recipient would be rejected by any provider: trying it elsewhere only spreads the bounce."""
    return kind is not ErrorKind.rejected


async def send_with_failover(providers: Sequence[Provider[PayloadT]], payload: PayloadT) -> Sent:
    """Send through the first provider that accepts ``payload``, in order.

    Returns the :class:`Sent` of that provider, its ``failures`` naming those that failed
    before. A ``rejected`` failure is raised at once (the remaining providers are never
    called); when every provider failed otherwise, :class:`FailoverExhausted` carries each
    attempt and the smallest ``retry_after`` any of them gave.
    """
    if not providers:
        raise ValueError("send_with_failover needs at least one provider")
    failures: list[Attempt] = []
    retry_afters: list[float] = []
    for provider in providers:
        try:
            sent = await provider.send(payload)
        except ProviderError as error:
            failures.append(error.attempt)
            log.warning(
                "notify.provider_failed",
                provider=provider.name,
                provider_kind=provider.kind,
                error_kind=error.kind.value,
                status=error.status,
                code=error.code,
                retry_after=error.retry_after,
            )
            if not moves_on(error.kind):
                raise
            if error.retry_after is not None:
                retry_afters.append(error.retry_after)
            continue
        if failures:
            log.info(
                "notify.failed_over",
                provider=provider.name,
                failed=[attempt.provider for attempt in failures],
            )
            return replace(sent, failures=tuple(failures))
        return sent
    raise FailoverExhausted(tuple(failures), min(retry_afters, default=None))
