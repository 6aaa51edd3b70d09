"""Values sealed by the master key: the registry of where they live, platform keys, rotation.

**The registry.** Every table column holding :meth:`Keyring.seal` output is registered by its
owner, next to the model or the code that seals it (:func:`register_sealed_column`): the
column, and how to compute a row's associated data (from the row's own columns, or from
columns of tables joined to it). Master key rotation walks the registry; a ``LargeBinary``
column whose name ends in ``sealed`` that no owner registered makes the rotation and its
check fail while it holds values (:func:`unregistered_sealed_columns`), so a forgotten owner
cannot leave values behind under a key about to be dropped.

**Rotation** (``keel secrets rotate-master-key``): :func:`rewrap_sealed_values` re-wraps each
value's data key with the current master key, a batch of rows per transaction, keyed on the
primary key so that a run is resumable and a second run finds nothing to do. A row is updated
only if its value is still the one read (compare-and-set), so a value destroyed or replaced
meanwhile is never brought back. Values stay readable throughout: every process holds the new
key and the previous ones (``KEEL_MASTER_KEY_PREVIOUS``).

**Platform keys.** ``keel_keys`` holds keys the platform needs to outlive a master key
rotation, such as the key of the keyed hashes of tokens (API keys, refresh tokens, client
secrets): derived from the master key it would change with it, and every stored hash would
stop matching. :func:`load_token_hash_key` creates it once, as exactly the key earlier
versions derived, and hands it to the keyring at every start-up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import LargeBinary, String, func, inspect, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute, Mapped, mapped_column

from keel.core.crypto import DecryptionError, Keyring, MasterKeyError, sealed_key_id
from keel.core.db import Base, Database, UTCDateTime, utcnow
from keel.core.logging import get_logger
from keel.core.tenancy import ALL_TENANTS_OPTION

log = get_logger(__name__)

#: The name in ``keel_keys`` of the key of :meth:`Keyring.token_hash`.
TOKEN_HASH_KEY = "token-hash"  # noqa: S105  (a name, not a key)
#: Rows re-wrapped per transaction: short transactions, so serving goes on meanwhile.
DEFAULT_BATCH_SIZE = 200


class PlatformKey(Base):
    """A named platform-wide key, sealed (associated data ``keel-key:<name>``)."""

    __tablename__ = "keel_keys"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def platform_key_associated_data(name: str) -> bytes:
    return f"keel-key:{name}".encode()


# -- the registry ------------------------------------------------------------------------------

AssociatedData = Callable[[Any], bytes]


@dataclass(frozen=True)
class SealedColumn:
    """A column of sealed values and how to compute the associated data of one of its rows.

    ``associated_data`` receives a row holding the primary key (under its attribute name),
    the sealed value and each column of ``context`` (under its label or attribute name).
    """

    column: InstrumentedAttribute[Any]
    associated_data: AssociatedData
    #: Further columns the associated data needs, of the row's table or of ``joins``.
    context: tuple[Any, ...] = ()
    #: ``(target, onclause)`` pairs joining the tables ``context`` reads from.
    joins: tuple[tuple[Any, Any], ...] = ()
    model: type[Any] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", self.column.class_)

    @property
    def name(self) -> str:
        """``table.column``, as reports name it."""
        return f"{self.model.__tablename__}.{self.column.key}"

    @property
    def primary_key(self) -> InstrumentedAttribute[Any]:
        keys = inspect(self.model).primary_key
        if len(keys) != 1:
            raise TypeError(f"{self.name}: a sealed column's table needs a one-column primary key")
        attribute: InstrumentedAttribute[Any] = getattr(self.model, keys[0].key)
        return attribute


_REGISTRY: dict[str, SealedColumn] = {}


def register_sealed_column(
    column: InstrumentedAttribute[Any],
    associated_data: AssociatedData,
    *,
    context: Sequence[Any] = (),
    joins: Sequence[tuple[Any, Any]] = (),
) -> None:
    """Declare that ``column`` holds sealed values, for master key rotation.

    Example, a value bound to its row's user::

        register_sealed_column(
            UserTotp.secret_sealed,
            lambda row: f"auth.totp:{row.user_id}".encode(),
            context=(UserTotp.user_id,),
        )
    """
    sealed = SealedColumn(column, associated_data, tuple(context), tuple(joins))
    sealed.primary_key  # noqa: B018  (refuses a table rotation cannot page through)
    _REGISTRY[sealed.name] = sealed


def sealed_columns() -> list[SealedColumn]:
    """Every registered column, in name order (owners register at import)."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


register_sealed_column(PlatformKey.sealed, lambda row: platform_key_associated_data(row.name))


def unregistered_sealed_columns() -> list[str]:
    """``table.column`` of each ``LargeBinary`` column named ``…sealed`` of a known table that
    no owner registered (import every model first: ``keel.migrations.load_all_models``)."""
    found = []
    for table in Base.metadata.sorted_tables:
        for column in table.columns:
            name = f"{table.name}.{column.name}"
            if (
                isinstance(column.type, LargeBinary)
                and column.name.endswith("sealed")
                and name not in _REGISTRY
            ):
                found.append(name)
    return sorted(found)


# -- the token-hash key ------------------------------------------------------------------------


async def load_token_hash_key(database: Database, keyring: Keyring) -> None:
    """Give ``keyring`` the platform's token-hash key, creating it on the first start.

    Created as the key earlier versions derived from the master key (HKDF), so every hash
    already stored keeps matching: derived from the master key that sealed the data already
    there (the current one on a new database). Two processes starting at once on a new
    database both try to insert it; the primary key lets one win and the other reads it.
    """
    associated_data = platform_key_associated_data(TOKEN_HASH_KEY)
    sealed = await _stored_key(database, TOKEN_HASH_KEY)
    if sealed is None:
        key = keyring.derive_token_hash_key(await _key_id_of_existing_data(database, keyring))
        try:
            async with database.session() as session:
                session.add(
                    PlatformKey(name=TOKEN_HASH_KEY, sealed=keyring.seal(key, associated_data))
                )
        except IntegrityError:
            sealed = await _stored_key(database, TOKEN_HASH_KEY)  # another process won
            if sealed is None:
                raise
        else:
            log.info("crypto.token_hash_key.created")
    if sealed is not None:
        try:
            key = keyring.open(sealed, associated_data)
        except DecryptionError:
            raise MasterKeyError(
                "the platform's token-hash key (keel_keys) does not open with the configured "
                "master key: set KEEL_MASTER_KEY to the key this database was sealed with, or "
                "list that key in KEEL_MASTER_KEY_PREVIOUS"
            ) from None
    keyring.use_token_hash_key(key)


async def _stored_key(database: Database, name: str) -> bytes | None:
    async with database.session() as session:
        return await session.scalar(select(PlatformKey.sealed).where(PlatformKey.name == name))


async def _key_id_of_existing_data(database: Database, keyring: Keyring) -> str | None:
    """The id of a held master key that sealed a value already stored, if any."""
    async with database.session() as session:
        for sealed_column in sealed_columns():
            if sealed_column.model is PlatformKey:
                continue
            value = await session.scalar(
                select(sealed_column.column)
                .where(sealed_column.column.is_not(None))
                .limit(1)
                .execution_options(**{ALL_TENANTS_OPTION: True})
            )
            if value is None:
                continue
            try:
                key_id = sealed_key_id(value)
            except DecryptionError:
                continue
            if keyring.holds(key_id):
                return key_id
    return None


# -- rotation ----------------------------------------------------------------------------------


@dataclass
class ColumnCount:
    """Where the values of one sealed column stand against a keyring."""

    name: str
    values: int = 0
    #: Under the current master key.
    current: int = 0
    #: Under a previous key this keyring holds: rotation re-wraps them.
    previous: int = 0
    #: Under a key this keyring does not hold (or malformed): they do not open.
    unknown: int = 0
    #: Re-wrapped by this run (rotation only).
    rewrapped: int = 0

    @property
    def remaining(self) -> int:
        """Values not under the current master key."""
        return self.previous + self.unknown


async def count_sealed_values(
    database: Database, keyring: Keyring, *, batch_size: int = DEFAULT_BATCH_SIZE
) -> list[ColumnCount]:
    """Count, per registered column, the values under the current key and under others."""
    counts = []
    for sealed_column in sealed_columns():
        count = ColumnCount(sealed_column.name)
        async for _session, rows in _batches(database, sealed_column, batch_size):
            for row in rows:
                _tally(count, keyring, row[1])
        counts.append(count)
    return counts


async def rewrap_sealed_values(
    database: Database,
    keyring: Keyring,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[ColumnCount], None] | None = None,
) -> list[ColumnCount]:
    """Re-wrap every registered value not under the current master key, a batch a transaction.

    Idempotent and resumable: values already under the current key are left as they are. A
    value under a key the keyring does not hold is counted as ``unknown`` and left alone.
    """
    counts = []
    for sealed_column in sealed_columns():
        count = ColumnCount(sealed_column.name)
        primary_key, column = sealed_column.primary_key, sealed_column.column
        async for session, rows in _batches(database, sealed_column, batch_size):
            for row in rows:
                if _tally(count, keyring, row[1]) != "previous":
                    continue
                try:
                    rewrapped = keyring.rewrap(row[1], sealed_column.associated_data(row))
                except DecryptionError:
                    count.previous -= 1
                    count.unknown += 1
                    continue
                result = await session.execute(
                    update(sealed_column.model)
                    .where(primary_key == row[0], column == row[1])
                    .values({column.key: rewrapped})
                    .execution_options(synchronize_session=False, **{ALL_TENANTS_OPTION: True})
                )
                if getattr(result, "rowcount", 0):
                    count.rewrapped += 1
            if on_batch is not None:
                on_batch(count)
        counts.append(count)
    return counts


def _tally(count: ColumnCount, keyring: Keyring, sealed: bytes) -> str:
    count.values += 1
    try:
        key_id = sealed_key_id(sealed)
    except DecryptionError:
        key_id = ""
    if key_id == keyring.current.key_id:
        count.current += 1
        return "current"
    if keyring.holds(key_id):
        count.previous += 1
        return "previous"
    count.unknown += 1
    return "unknown"


async def _batches(
    database: Database, sealed_column: SealedColumn, batch_size: int
) -> AsyncIterator[tuple[AsyncSession, list[Any]]]:
    """Rows ``(primary key, sealed, *context)`` with a value, in primary key order, each
    batch with the session of its own transaction (committed once the consumer is done)."""
    primary_key, column = sealed_column.primary_key, sealed_column.column
    last: Any = None
    while True:
        statement = select(primary_key, column, *sealed_column.context).select_from(
            sealed_column.model
        )
        for target, onclause in sealed_column.joins:
            statement = statement.join(target, onclause)
        statement = statement.where(column.is_not(None))
        if last is not None:
            statement = statement.where(primary_key > last)
        statement = (
            statement.order_by(primary_key)
            .limit(batch_size)
            .execution_options(**{ALL_TENANTS_OPTION: True})
        )
        async with database.session() as session:
            batch = list((await session.execute(statement)).all())
            if batch:
                yield session, batch
        if len(batch) < batch_size:
            return
        last = batch[-1][0]


async def count_unregistered_values(database: Database) -> dict[str, int]:
    """Values held by sealed-looking columns no owner registered, per ``table.column``."""
    found = {}
    tables = Base.metadata.tables
    async with database.session() as session:
        for name in unregistered_sealed_columns():
            table_name, column_name = name.rsplit(".", 1)
            column = tables[table_name].c[column_name]
            count = await session.scalar(
                select(func.count()).select_from(tables[table_name]).where(column.is_not(None))
            )
            if count:
                found[name] = int(count)
    return found
