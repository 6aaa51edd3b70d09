"""Group commit for events recorded "now" (:func:`keel.core.audit.record_event_now`).

A caller hands over its event and waits. While one batch is being appended, the events of
every other caller gather; the next batch takes them all, so under load one transaction and
one tree update serve many requests, and an idle log answers one event without delay.

These batches sign no tree head of their own. A head covering them is signed within
:data:`MAX_MERGE_DELAY` of the first unsigned batch (the maximum merge delay of Certificate
Transparency and Trillian): one signature a second under load instead of one a batch, and
one statement fewer on the path of every read a service audits. Whoever needs a head that
covers a given event at once gets it from :meth:`keel.audit.service.log.AuditLog.fresh_head`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from keel.audit.service.log import SEQUENCE_BATCH, AuditLog
from keel.core.logging import get_logger

log = get_logger(__name__)

_Waiting = tuple[dict[str, Any], asyncio.Future[None]]

#: Longest time an event appended here waits for a signed head that covers it, in seconds.
MAX_MERGE_DELAY = 1.0


class GroupWriter:
    def __init__(self, log: AuditLog) -> None:
        self._log = log
        self._waiting: list[_Waiting] = []
        self._appending: list[_Waiting] = []
        self._arrived = asyncio.Event()
        #: Tenants with events past their latest head, and when that head is due.
        self._unsigned: dict[str, float] = {}

    async def __call__(self, document: dict[str, Any]) -> None:
        stored = asyncio.get_running_loop().create_future()
        self._waiting.append((document, stored))
        self._arrived.set()
        await stored

    async def run(self) -> None:
        """Append what has gathered, batch after batch, and sign the heads that fall due,
        until cancelled."""
        try:
            while True:
                await self._wait()
                self._arrived.clear()
                waiting, self._waiting = self._waiting, []
                by_tenant: dict[str, list[_Waiting]] = {}
                for item in waiting:
                    by_tenant.setdefault(item[0]["tenant"], []).append(item)
                for tenant_id, items in by_tenant.items():
                    for first in range(0, len(items), SEQUENCE_BATCH):
                        self._appending = items[first : first + SEQUENCE_BATCH]
                        await self._append(tenant_id, self._appending)
                        self._appending = []
                await self._sign_due_heads()
        finally:
            # Stopped: the callers record with their unit of work's commit instead (an event
            # that was stored after all is recognised by its id and kept once).
            _settle(self._appending + self._waiting, RuntimeError("the audit writer stopped"))
            # Briefly: shutdown waits for this. A head left unsigned is signed by whoever
            # reads the head next (AuditLog.fresh_head) or by the heartbeat.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._sign_due_heads(everything=True)

    async def _wait(self) -> None:
        """Until events arrive or the earliest head falls due."""
        if not self._unsigned:
            await self._arrived.wait()
            return
        delay = min(self._unsigned.values()) - time.monotonic()
        with contextlib.suppress(TimeoutError):
            # asyncio.timeout, not wait_for: see keel.audit.spec.
            async with asyncio.timeout(max(0.0, delay)):
                await self._arrived.wait()

    async def _append(self, tenant_id: str, items: list[_Waiting]) -> None:
        try:
            await self._log.append(tenant_id, [document for document, _ in items], sign=False)
        except Exception as error:
            _settle(items, error)
        else:
            self._unsigned.setdefault(tenant_id, time.monotonic() + MAX_MERGE_DELAY)
            _settle(items, None)

    async def _sign_due_heads(self, *, everything: bool = False) -> None:
        now = time.monotonic()
        for tenant_id, due in list(self._unsigned.items()):
            if not everything and due > now:
                continue
            try:
                await self._log.sign_current_head(tenant_id)
            except Exception:  # the next round (or the heartbeat) signs it
                log.warning("audit.head.sign_failed", tenant=tenant_id, exc_info=True)
                if everything:
                    continue
                self._unsigned[tenant_id] = now + MAX_MERGE_DELAY
            else:
                del self._unsigned[tenant_id]


def _settle(items: list[_Waiting], error: Exception | None) -> None:
    for _, stored in items:
        if stored.done():  # its caller gave up waiting
            continue
        if error is None:
            stored.set_result(None)
        else:
            stored.set_exception(error)
