"""``AuditAPI``: Keel's audit endpoints, one HTTP call each, and the receipts they answer.

A transaction is not spooled: ``record_transaction`` posts it to Keel's transactions endpoint
and returns its receipt, retrying what may be retried. Keel checks its shape (amount,
currency, accounts, authorising chain) and records it under Keel's own action
``finance.transaction.record``, which the events endpoints (and so the spool) refuse.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Self, Unpack

import pydantic

from keel_client._env import as_auth, env_settings
from keel_client.audit._events import (
    TransactionFields,
    build_transaction,
    encode_event,
)
from keel_client.audit._heads import TreeHead
from keel_client.audit._vocabulary import ACTION_PATTERN, MAX_BATCH_SIZE, Sensitivity
from keel_client.http import BaseAPIClient, RequestOptions

__all__ = ["AuditAPI", "BatchReceipts", "EventPage", "EventReceipt", "TransactionReceipt"]

BATCH_PATH = "/audit/v1/events/batch"
EVENTS_PATH = "/audit/v1/events"
ACTIONS_PATH = "/audit/v1/actions"
TRANSACTIONS_PATH = "/audit/v1/transactions"


class EventReceipt(pydantic.BaseModel):
    """Keel's acknowledgement of one event: its place in the tenant's Merkle tree."""

    id: str
    leaf_index: int
    leaf_hash: str


class BatchReceipts(pydantic.BaseModel):
    """The answer to a batch: one receipt per event, in request order, and the signed tree
    head that includes them (verify it with ``keel_client.audit.verify_tree_head``)."""

    receipts: list[EventReceipt]
    tree_head: dict[str, Any] = {}

    def signed_head(self) -> TreeHead:
        """``tree_head`` parsed; raises ``ProofError`` when it is not a signed tree head."""
        return TreeHead.from_json(self.tree_head)


class TransactionReceipt(EventReceipt):
    """Keel's acknowledgement of a transaction: its event's id (``txn:<transaction id>``),
    leaf index and hash, and the signed tree head that includes it."""

    tree_head: dict[str, Any] = {}

    def signed_head(self) -> TreeHead:
        """``tree_head`` parsed; raises ``ProofError`` when it is not a signed tree head."""
        return TreeHead.from_json(self.tree_head)


class EventPage(pydantic.BaseModel):
    """One page of stored events; pass ``next_cursor`` back as ``cursor`` for the next."""

    items: list[dict[str, Any]]
    next_cursor: str | None = None


class AuditAPI(BaseAPIClient):
    """Keel's audit endpoints, one HTTP call each, on the resilient base client.

    ``AuditClient`` sends through one of these; use it directly to register actions, read
    events, or send a batch and wait for its receipts.

    Example::

        async with AuditAPI("https://keel.internal", auth=BearerToken(api_key)) as api:
            await api.register_action(
                "billing.invoice.refund", description="Refund issued", category="billing"
            )
            receipts = await api.send_events([build_event("billing.invoice.refund")])
            async for event in api.iter_events(action="billing."):
                ...

    Errors are ``keel_client.http`` errors: a refused event is a ``ClientError`` with status
    422 (validation) or 409 (the id was stored with other content). Every call but
    :meth:`record_transaction` takes per-call ``RequestOptions`` (``timeout``, ``deadline``,
    ``max_retries``, ``request_id``...) over the client's defaults.
    """

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> Self:
        """A client for ``KEEL_URL`` authenticated with ``KEEL_TOKEN`` (an API key or token);
        ``options`` are ``BaseAPIClient``'s."""
        url, token = env_settings(environ)
        options.setdefault("auth", as_auth(token))
        return cls(url, **options)

    async def send_events(
        self, events: Sequence[Mapping[str, Any]], **options: Unpack[RequestOptions]
    ) -> BatchReceipts:
        """Store events atomically (1 to 1000, built by :func:`build_event`); receipts in
        order. An event sent again with the same id and content gets its original receipt."""
        return await self.send_lines([encode_event(event) for event in events], **options)

    async def send_lines(
        self, lines: Sequence[bytes], **options: Unpack[RequestOptions]
    ) -> BatchReceipts:
        """:meth:`send_events` for events already encoded by :func:`encode_event`."""
        if not 0 < len(lines) <= MAX_BATCH_SIZE:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH_SIZE} events")
        body = b'{"events":[' + b",".join(lines) + b"]}"
        # Keel keys events by id, so sending a batch again is harmless: retryable.
        call: RequestOptions = {"idempotent": True, **options}
        return await self.post(
            BATCH_PATH,
            content=body,
            headers={"Content-Type": "application/json"},
            response_model=BatchReceipts,
            **call,
        )

    async def record_transaction(self, **fields: Unpack[TransactionFields]) -> TransactionReceipt:
        """Record a financial transaction now (see :class:`TransactionFields`); its receipt.

        Checked first (:func:`build_transaction`: a float amount is a ``TypeError``), then
        sent, retried on connection errors, timeouts and 429/502/503/504: Keel keys the event
        by the transaction id, so a resend answers the first receipt. The same id with other
        fields is a ``ClientError`` with status 409; an unknown currency one with status 422.
        """
        return await self.post(
            TRANSACTIONS_PATH,
            json=build_transaction(**fields),
            response_model=TransactionReceipt,
            idempotent=True,
        )

    async def register_action(
        self,
        action: str,
        *,
        description: str,
        category: str = "change",
        sensitivity: Sensitivity | str = Sensitivity.INTERNAL,
        sensitive_fields: Sequence[str] = (),
        **options: Unpack[RequestOptions],
    ) -> None:
        """Register (or update) an action for the caller's tenant; events need it first."""
        if not ACTION_PATTERN.fullmatch(action):
            raise ValueError(f"action {action!r} is not of the form service.resource.verb")
        await self.put(
            f"{ACTIONS_PATH}/{action}",
            json={
                "description": description,
                "category": category,
                "sensitivity": Sensitivity(sensitivity).value,
                "sensitive_fields": list(sensitive_fields),
            },
            **options,
        )

    async def list_events(
        self,
        *,
        action: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> EventPage:
        """One page of stored events, ``action`` a prefix (``"billing."``), limit 1 to 500."""
        params: dict[str, str | int] = {"limit": limit}
        if action is not None:
            params["action"] = action
        if cursor is not None:
            params["cursor"] = cursor
        return await self.get(EVENTS_PATH, params=params, response_model=EventPage, **options)

    async def iter_events(
        self,
        *,
        action: str | None = None,
        page_size: int = 500,
        **options: Unpack[RequestOptions],
    ) -> AsyncIterator[dict[str, Any]]:
        """Every stored event (of an ``action`` prefix), page after page."""
        cursor: str | None = None
        while True:
            page = await self.list_events(action=action, limit=page_size, cursor=cursor, **options)
            for item in page.items:
                yield item
            if page.next_cursor is None or not page.items:
                return
            cursor = page.next_cursor
