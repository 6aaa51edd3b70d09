"""Group commit for events recorded "now" (:func:`keel.core.audit.record_event_now`).

A caller hands over its event and waits. While one batch is being appended, the events of
every other caller gather; the next batch takes them all, so under load one transaction,
one tree update and one signed head serve many requests, and an idle log answers one event
without delay.
"""

from __future__ import annotations

import asyncio
from typing import Any

from keel.audit.service import SEQUENCE_BATCH, AuditLog

_Waiting = tuple[dict[str, Any], asyncio.Future[None]]


class GroupWriter:
    def __init__(self, log: AuditLog) -> None:
        self._log = log
        self._waiting: list[_Waiting] = []
        self._appending: list[_Waiting] = []
        self._arrived = asyncio.Event()

    async def __call__(self, document: dict[str, Any]) -> None:
        stored = asyncio.get_running_loop().create_future()
        self._waiting.append((document, stored))
        self._arrived.set()
        await stored

    async def run(self) -> None:
        """Append what has gathered, batch after batch, until cancelled."""
        try:
            while True:
                await self._arrived.wait()
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
        finally:
            # Stopped: the callers record with their unit of work's commit instead (an event
            # that was stored after all is recognised by its id and kept once).
            _settle(self._appending + self._waiting, RuntimeError("the audit writer stopped"))

    async def _append(self, tenant_id: str, items: list[_Waiting]) -> None:
        try:
            await self._log.append(tenant_id, [document for document, _ in items])
        except Exception as error:
            _settle(items, error)
        else:
            _settle(items, None)


def _settle(items: list[_Waiting], error: Exception | None) -> None:
    for _, stored in items:
        if stored.done():  # its caller gave up waiting
            continue
        if error is None:
            stored.set_result(None)
        else:
            stored.set_exception(error)
