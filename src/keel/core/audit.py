"""The one internal audit recorder every Keel service writes through.

``record_event(session, ...)`` turns a change into an audit event document and keeps it on
the caller's session; when that session commits, the documents are inserted into the audit
outbox (``audit_outbox``) *in the same transaction*, so an event exists exactly when the change
it records does. The audit service (``keel.audit``) then sequences outbox rows into its
tamper-evident log: leaf indexes, Merkle tree, signed tree heads. A rolled-back unit of work
leaves no event behind.

Every action comes from a catalogue (``register_actions``): an unknown action is a programming
error and raises. Event data passes the log redaction, and fields the catalogue marks
sensitive are replaced before anything is stored: secrets, tokens and passwords never reach
the audit trail.

Financial transactions have a typed recorder of their own, ``record_transaction``: a
``Decimal`` amount (floats refused), an ISO 4217 currency, both accounts, the reason, the user
and the authorising chain, recorded as the built-in action ``finance.transaction.record``
with the amount kept as its exact decimal text.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

import structlog
from sqlalchemy import BigInteger, Integer, LargeBinary, String, event, insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Mapped, Session, mapped_column

from keel.core.db import Base, UTCDateTime, utcnow
from keel.core.ids import new_id
from keel.core.logging import REDACTED, get_logger, redact
from keel.core.tenancy import bound_tenant
from keel_client.audit import (
    ACTION_PATTERN,
    CURRENCY_PATTERN,
    TRANSACTION_EVENT_PREFIX,
    canonical_json,
    check_amount,
    check_authorising_chain,
    check_transaction_id,
    check_transaction_text,
)

# The event vocabulary is the SDK's, defined once for Keel and the fleet; the recorder's
# arguments use it, so it is importable from here too.
from keel_client.audit import Outcome as Outcome
from keel_client.audit import Sensitivity as Sensitivity
from keel_client.auth import Principal

_log = get_logger(__name__)

#: Version of the event document's shape, stored in every event.
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Actor:
    """Who performs an operation, for the audit trail."""

    type: str | None = None
    id: str | None = None
    ip_address: str | None = None
    user_agent: str | None = None
    display: str | None = None

    @classmethod
    def of(cls, principal: Principal | None, ip_address: str | None = None) -> Actor:
        if principal is None:
            return cls(ip_address=ip_address)
        return cls(principal.principal_type, principal.subject, ip_address)


#: Keel itself: the CLI, start-up and scheduled work.
SYSTEM = Actor("system", "keel")


@dataclass(frozen=True)
class ActionSpec:
    """An entry of the action catalogue: ``service.resource.verb``."""

    name: str
    description: str
    #: Retention is set per category (``security``, ``access``, ``change``, ``finance``...).
    category: str = "change"
    sensitivity: Sensitivity = Sensitivity.INTERNAL
    #: Keys of ``data`` replaced by ``[REDACTED]`` before the event is stored.
    sensitive_fields: frozenset[str] = field(default_factory=frozenset)


#: The actions Keel's own services record, registered by each service at import.
_CATALOGUE: dict[str, ActionSpec] = {}


def register_actions(*specs: ActionSpec) -> None:
    for spec in specs:
        if not ACTION_PATTERN.fullmatch(spec.name):
            raise ValueError(f"{spec.name!r} is not service.resource.verb")
        _CATALOGUE[spec.name] = spec


def builtin_action(name: str) -> ActionSpec | None:
    return _CATALOGUE.get(name)


def builtin_actions() -> list[ActionSpec]:
    return sorted(_CATALOGUE.values(), key=lambda spec: spec.name)


class AuditOutbox(Base):
    """Committed events waiting to be sequenced into the log (insert, then delete once in)."""

    __tablename__ = "audit_outbox"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    tenant_id: Mapped[str] = mapped_column(String(36), index=True)
    event_id: Mapped[str] = mapped_column(String(64))
    document: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def event_time(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds: the one time format of event documents."""
    if moment.utcoffset() is not None:
        moment = moment.astimezone(UTC)
    # The year always in four digits: strftime's %Y gives "1" for year 1 on glibc, which
    # is not RFC 3339 and which datetime.fromisoformat refuses to read back.
    return f"{moment.year:04d}" + moment.strftime("-%m-%dT%H:%M:%S.%fZ")


def build_document(
    *,
    tenant_id: str,
    action: str,
    spec: ActionSpec,
    event_id: str | None = None,
    time: datetime | None = None,
    outcome: str = Outcome.SUCCESS,
    actor: dict[str, Any] | None = None,
    target: dict[str, Any] | None = None,
    reason: str | None = None,
    request_id: str | None = None,
    trace_id: str | None = None,
    sensitivity: str | None = None,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The event document as stored and hashed: absent fields omitted, data redacted."""
    clean = redact(data or {})
    for key in spec.sensitive_fields & clean.keys():
        clean[key] = REDACTED
    document: dict[str, Any] = {
        "id": event_id or new_id(),
        "time": event_time(time or utcnow()),
        "tenant": tenant_id,
        "action": action,
        "outcome": str(outcome),
        "sensitivity": str(sensitivity or spec.sensitivity),
        "schema_version": SCHEMA_VERSION,
        "data": clean,
    }
    optional = {
        "actor": _without_none(actor),
        "target": _without_none(target),
        "reason": reason,
        "request_id": request_id,
        "trace_id": trace_id,
    }
    document.update({key: value for key, value in optional.items() if value})
    return document


def _without_none(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if not value:
        return None
    return {key: item for key, item in value.items() if item is not None} or None


def record_event(
    session: AsyncSession,
    *,
    tenant_id: str,
    action: str,
    outcome: Outcome = Outcome.SUCCESS,
    actor: Actor | None = None,
    actor_type: str | None = None,
    actor_id: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    ip_address: str | None = None,
    reason: str | None = None,
    data: dict[str, Any] | None = None,
    event_id: str | None = None,
    time: datetime | None = None,
) -> dict[str, Any]:
    """Keep an audit event on ``session``; it is stored when, and only if, the session commits.

    ``actor`` fills the actor fields and address; an explicit ``actor_type``, ``actor_id`` or
    ``ip_address`` wins over it. ``event_id`` (default: a new one) makes recording the same
    fact twice harmless: the log keeps the first event of an id. ``time`` (aware; default:
    now) is when it happened. Returns the event document.
    """
    spec = _CATALOGUE.get(action)
    if spec is None:
        raise ValueError(f"audit action {action!r} is not in the catalogue")
    if bound_tenant(session) not in (None, tenant_id):
        raise ValueError("an audit event must belong to the session's tenant")
    actor = actor or Actor()
    context = structlog.contextvars.get_contextvars()
    document = build_document(
        tenant_id=tenant_id,
        action=action,
        spec=spec,
        event_id=event_id,
        time=time,
        outcome=outcome,
        actor=_actor_fields(actor, type=actor_type, id=actor_id, ip=ip_address),
        target={"type": target_type, "id": target_id},
        reason=reason,
        request_id=context.get("request_id"),
        trace_id=context.get("trace_id"),
        data=data,
    )
    session.sync_session.info.setdefault(_PENDING, []).append(document)
    return document


class EventWriter(Protocol):
    """Appends one event document to the log and returns once it is stored."""

    async def __call__(self, document: dict[str, Any]) -> None: ...


#: The writer of each engine, where this process runs the audit service.
_writers: weakref.WeakKeyDictionary[Any, EventWriter] = weakref.WeakKeyDictionary()


def use_event_writer(engine: AsyncEngine, writer: EventWriter) -> Callable[[], None]:
    """Let :func:`record_event_now` on ``engine``'s sessions use ``writer``; returns an undo."""
    _writers[engine.sync_engine] = writer

    def undo() -> None:
        _writers.pop(engine.sync_engine, None)

    return undo


async def record_event_now(session: AsyncSession, **fields: Any) -> dict[str, Any]:
    """:func:`record_event` for a fact the unit of work does not change anything for (a token
    issued, a secret read): the event is in the log before this returns, appended with those
    of concurrent callers in one transaction, and the caller's unit of work stays read-only.

    Where this process does not run the audit service, where the unit of work has already
    begun writing (on SQLite the append would wait for it), or where the append fails, the
    event goes with the unit of work's commit as :func:`record_event` does.
    """
    document = record_event(session, **fields)
    writer = _writers.get(session.sync_session.get_bind().engine)
    if writer is None or await _writes_pending(session):
        return document
    pending: list[dict[str, Any]] = session.sync_session.info[_PENDING]
    pending.remove(document)
    try:
        await writer(document)
    except Exception:
        pending.append(document)  # stored with the commit instead
        _log.warning("audit.write_now.failed", action=document["action"], exc_info=True)
    return document


async def _writes_pending(session: AsyncSession) -> bool:
    sync_session = session.sync_session
    if sync_session.new or sync_session.dirty or sync_session.deleted:
        return True
    if not sync_session.in_transaction():
        return False
    connection = await session.connection()
    driver = (await connection.get_raw_connection()).driver_connection
    return bool(getattr(driver, "writing", False))


def _actor_fields(
    actor: Actor, *, type: str | None = None, id: str | None = None, ip: str | None = None
) -> dict[str, Any]:
    """The document's ``actor`` of ``actor``; ``type``, ``id`` and ``ip`` win when given."""
    return {
        "type": type or actor.type,
        "id": id or actor.id,
        "display": actor.display,
        "ip": ip or actor.ip_address,
        "user_agent": actor.user_agent,
    }


# -- financial transactions -----------------------------------------------------------------

TRANSACTION_ACTION = "finance.transaction.record"
#: The target type of a transaction's event; its id is the transaction id.
TRANSACTION_TARGET = "transaction"

register_actions(
    ActionSpec(
        TRANSACTION_ACTION,
        "A financial transaction: amount, currency, accounts, user and authorising chain.",
        "finance",
        Sensitivity.CONFIDENTIAL,
    )
)


def check_currency(currency: object) -> str:
    """``currency`` when it is an ISO 4217 alphabetic code as written there (``"EUR"``,
    never ``"eur"``); ``ValueError`` otherwise."""
    if not isinstance(currency, str):
        raise TypeError("currency must be a string, an ISO 4217 code such as 'EUR'")
    import pycountry  # here, not at start: 5 MB, for recording a financial transaction

    if (
        not CURRENCY_PATTERN.fullmatch(currency)
        or pycountry.currencies.get(alpha_3=currency) is None
    ):
        raise ValueError(f"currency {currency!r} is not an ISO 4217 code such as 'EUR'")
    return currency


@dataclass(frozen=True)
class Transaction:
    """A financial transaction as the audit trail keeps it; checked when made.

    Raises ``TypeError`` for a float (or any non-``Decimal``) amount and ``ValueError`` for a
    non-finite amount, an unknown currency, more decimal places than the currency has, a
    naive time or a malformed field (see ``keel_client.audit.check_amount``).

    Example::

        Transaction(
            "tx-2026-0042", Decimal("1234.50"), "EUR", "ops-eur", "supplier-981",
            "invoice INV-118", "u-42", ("u-7", "u-9"), datetime.now(UTC),
        )
    """

    transaction_id: str
    amount: Decimal
    currency: str
    from_account: str
    to_account: str
    reason: str
    #: Who made it: an ``Actor`` with an id, or a user id.
    user: Actor | str
    #: Who approved it, in order; empty when no one had to.
    authorising_chain: Sequence[str]
    #: When it happened (timezone-aware); stored in UTC to the microsecond.
    time: datetime

    def __post_init__(self) -> None:
        check_transaction_id(self.transaction_id)
        check_currency(self.currency)
        check_amount(self.amount, self.currency)
        for name in ("from_account", "to_account", "reason"):
            check_transaction_text(name, getattr(self, name))
        if isinstance(self.user, str):
            check_transaction_text("user", self.user)
        elif not isinstance(self.user, Actor):
            raise TypeError("user must be an Actor or a user id")
        elif not self.user.id:
            raise ValueError("the transaction's user needs an id")
        chain = tuple(check_authorising_chain(self.authorising_chain))
        object.__setattr__(self, "authorising_chain", chain)
        if not isinstance(self.time, datetime):
            raise TypeError("time must be a datetime")
        if self.time.utcoffset() is None:
            raise ValueError("a transaction's time must be timezone-aware")

    @property
    def event_id(self) -> str:
        """The id of its audit event: recording the transaction again is harmless."""
        return TRANSACTION_EVENT_PREFIX + self.transaction_id

    @property
    def user_actor(self) -> Actor:
        return Actor("user", self.user) if isinstance(self.user, str) else self.user

    def data(self) -> dict[str, Any]:
        """The event's data: the amount as its exact text (``"1234.50"``), never a number."""
        user = self.user_actor
        return {
            "transaction_id": self.transaction_id,
            "amount": check_amount(self.amount, self.currency),
            "currency": self.currency,
            "from_account": self.from_account,
            "to_account": self.to_account,
            "user": _without_none(
                {"type": user.type or "user", "id": user.id, "display": user.display}
            ),
            "authorising_chain": list(self.authorising_chain),
        }


def record_transaction(
    session: AsyncSession,
    *,
    tenant_id: str,
    transaction_id: str,
    amount: Decimal,
    currency: str,
    from_account: str,
    to_account: str,
    reason: str,
    user: Actor | str,
    authorising_chain: Sequence[str],
    time: datetime,
    actor: Actor | None = None,
) -> dict[str, Any]:
    """Keep a financial transaction's audit event on ``session``, like :func:`record_event`:
    stored when, and only if, the session commits, with the change it records.

    The event is ``finance.transaction.record`` (category ``finance``, confidential), its id
    ``txn:<transaction_id>`` (the log keeps the first event of an id, so recording it again
    is harmless), its time the transaction's, its target the transaction, its actor
    ``actor`` (default: the user). Checks as :class:`Transaction`: a float amount is a
    ``TypeError``. Returns the event document.
    """
    transaction = Transaction(
        transaction_id,
        amount,
        currency,
        from_account,
        to_account,
        reason,
        user,
        authorising_chain,
        time,
    )
    return record_event(
        session,
        tenant_id=tenant_id,
        action=TRANSACTION_ACTION,
        actor=actor or transaction.user_actor,
        target_type=TRANSACTION_TARGET,
        target_id=transaction.transaction_id,
        reason=transaction.reason,
        data=transaction.data(),
        event_id=transaction.event_id,
        time=transaction.time,
    )


def transaction_document(
    *, tenant_id: str, transaction: Transaction, actor: Actor | None = None
) -> dict[str, Any]:
    """The event document of ``transaction``, as :func:`record_transaction` records it, for
    appending to the log directly (``POST /audit/v1/transactions``)."""
    context = structlog.contextvars.get_contextvars()
    return build_document(
        tenant_id=tenant_id,
        action=TRANSACTION_ACTION,
        spec=_CATALOGUE[TRANSACTION_ACTION],
        event_id=transaction.event_id,
        time=transaction.time,
        actor=_actor_fields(actor or transaction.user_actor),
        target={"type": TRANSACTION_TARGET, "id": transaction.transaction_id},
        reason=transaction.reason,
        request_id=context.get("request_id"),
        trace_id=context.get("trace_id"),
        data=transaction.data(),
    )


_PENDING = "keel.audit.pending"
#: Called after a commit that stored events, with the tenants they belong to.
_on_recorded: list[Callable[[set[str]], None]] = []


def on_recorded(callback: Callable[[set[str]], None]) -> Callable[[], None]:
    """Be told (synchronously, keep it short) after a commit stored events; returns an undo."""
    _on_recorded.append(callback)
    return lambda: _on_recorded.remove(callback)


def outbox_rows(documents: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "tenant_id": document["tenant"],
            "event_id": document["id"],
            "document": canonical_json(document),
            "created_at": utcnow(),
        }
        for document in documents
    ]


@event.listens_for(Session, "before_commit")
def _store_pending_events(session: Session) -> None:
    documents = session.info.pop(_PENDING, None)
    if documents:
        session.connection().execute(insert(AuditOutbox), outbox_rows(documents))
        session.info["keel.audit.tenants"] = {document["tenant"] for document in documents}


@event.listens_for(Session, "after_commit")
def _announce_stored_events(session: Session) -> None:
    tenants = session.info.pop("keel.audit.tenants", None)
    if tenants:
        for callback in list(_on_recorded):
            callback(tenants)


@event.listens_for(Session, "after_rollback")
def _forget_pending_events(session: Session) -> None:
    session.info.pop(_PENDING, None)
    session.info.pop("keel.audit.tenants", None)
