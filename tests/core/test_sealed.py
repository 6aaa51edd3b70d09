"""Sealed values across a master key rotation: ``Keyring.rewrap``, the registry of sealed
columns, re-wrapping a database's values in batches, and the token-hash key that outlives the
master key (on SQLite and PostgreSQL, each test on a database of its own)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select

from keel.core.crypto import DecryptionError, Envelope, Keyring, MasterKey
from keel.core.db import Database
from keel.core.lifecycle import build_context, start_services
from keel.core.sealed import (
    PlatformKey,
    count_sealed_values,
    load_token_hash_key,
    rewrap_sealed_values,
    sealed_columns,
    unregistered_sealed_columns,
)
from keel.core.services import available_services
from keel.core.tenancy import ensure_tenant
from keel.migrations import load_all_models, upgrade
from keel.secrets.engines.kv import KvEngine
from keel.settings import KNOWN_SERVICES, Settings
from tests.support.databases import create_postgres_database, drop_postgres_database

OLD = MasterKey.generate()
NEW = MasterKey.generate()
AAD = b"tests.sealed:row-1"


def test_rewrap_changes_only_the_wrap_and_opens_with_the_new_key_alone() -> None:
    sealed = Keyring(OLD).seal(b"hunter2", AAD)

    rewrapped = Keyring(NEW, [OLD]).rewrap(sealed, AAD)

    before, after = Envelope.parse(sealed), Envelope.parse(rewrapped)
    assert (before.key_id, after.key_id) == (OLD.key_id, NEW.key_id)
    assert after.payload == before.payload  # the value's nonce and ciphertext, byte for byte
    assert after.wrapped_key != before.wrapped_key
    assert Keyring(NEW).open(rewrapped, AAD) == b"hunter2"
    with pytest.raises(DecryptionError, match="not in the keyring"):
        Keyring(OLD).open(rewrapped, AAD)


def test_rewrap_refuses_other_associated_data_and_keys_not_held() -> None:
    sealed = Keyring(OLD).seal(b"hunter2", AAD)
    with pytest.raises(DecryptionError, match="tampered or misplaced"):
        Keyring(NEW, [OLD]).rewrap(sealed, b"tests.sealed:row-2")
    with pytest.raises(DecryptionError, match="not in the keyring"):
        Keyring(NEW).rewrap(sealed, AAD)
    current = Keyring(NEW).seal(b"x", AAD)
    assert Keyring(NEW, [OLD]).rewrap(current, AAD) is current  # already under the current key


def test_the_owners_register_every_sealed_column_of_the_platform() -> None:
    available_services(KNOWN_SERVICES)
    load_all_models()
    assert {column.name for column in sealed_columns()} >= {
        "keel_keys.sealed",
        "auth_signing_keys.private_key_sealed",
        "auth_totp.secret_sealed",
        "audit_signing_keys.private_key_sealed",
        "secrets_versions.sealed",
    }
    # The safety net rotation relies on: no sealed-looking column left unregistered.
    assert unregistered_sealed_columns() == []


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new, migrated database of this test alone (rotation touches every row)."""
    admin_url = name = None
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'keel.db'}"
    else:
        admin_url = str(request.getfixturevalue("postgres_admin_url"))
        name = f"keel_sealed_{uuid.uuid4().hex[:12]}"
        url = asyncio.run(create_postgres_database(admin_url, name))

    async def migrate() -> None:
        database = Database.from_settings(Settings(database_url=url))
        try:
            await upgrade(database)
        finally:
            await database.dispose()

    try:
        asyncio.run(migrate())
        yield url
    finally:
        if admin_url is not None and name is not None:
            asyncio.run(drop_postgres_database(admin_url, name))


def settings_of(url: str, tmp_path: Path, current: MasterKey, *previous: MasterKey) -> Settings:
    return Settings(
        database_url=url,
        data_dir=tmp_path / ".keel",
        master_key=current.to_base64(),
        master_key_previous=",".join(key.to_base64() for key in previous) or None,
    )


async def test_token_hash_key_is_the_derived_one_and_survives_rotation(
    fresh_url: str, tmp_path: Path
) -> None:
    context = build_context(settings_of(fresh_url, tmp_path, OLD))
    try:
        await start_services(context)
        issued = context.keyring.token_hash("keel_api-key")
    finally:
        await context.database.dispose()
    # Exactly what a bare keyring derives: hashes stored before the key was stored still match.
    assert issued == Keyring(OLD).token_hash("keel_api-key")

    rotating = build_context(settings_of(fresh_url, tmp_path, NEW, OLD))
    try:
        await start_services(rotating)
        assert rotating.keyring.token_hash("keel_api-key") == issued
        counts = await rewrap_sealed_values(rotating.database, rotating.keyring, batch_size=2)
        assert {count.name: count.rewrapped for count in counts}["keel_keys.sealed"] == 1
    finally:
        await rotating.database.dispose()

    rotated = build_context(settings_of(fresh_url, tmp_path, NEW))  # the old key dropped
    try:
        await start_services(rotated)
        assert rotated.keyring.token_hash("keel_api-key") == issued
        assert rotated.keyring.token_hash("keel_api-key") != Keyring(NEW).token_hash("keel_api-key")
    finally:
        await rotated.database.dispose()


async def test_processes_starting_together_agree_on_one_token_hash_key(
    fresh_url: str, tmp_path: Path
) -> None:
    settings = settings_of(fresh_url, tmp_path, OLD)
    databases = [Database.from_settings(settings) for _ in range(3)]
    keyrings = [Keyring(OLD) for _ in databases]
    try:
        await asyncio.gather(
            *(load_token_hash_key(db, ring) for db, ring in zip(databases, keyrings, strict=True))
        )
        async with databases[0].session() as session:
            rows = await session.scalar(select(func.count()).select_from(PlatformKey))
    finally:
        for database in databases:
            await database.dispose()
    assert rows == 1
    assert len({keyring.token_hash("t") for keyring in keyrings}) == 1


async def test_a_first_start_under_a_new_key_derives_from_the_key_of_the_stored_data(
    fresh_url: str, tmp_path: Path
) -> None:
    """A database from before ``keel_keys`` (no token-hash key yet), first started once the
    operator already made a new key current: the hashes were made under the old key."""
    context = build_context(settings_of(fresh_url, tmp_path, OLD))
    try:
        await start_services(context)  # signing keys sealed under OLD
        async with context.database.session() as session:
            await session.execute(delete(PlatformKey))
    finally:
        await context.database.dispose()

    later = build_context(settings_of(fresh_url, tmp_path, NEW, OLD))
    try:
        await start_services(later)
        assert later.keyring.token_hash("t") == Keyring(OLD).token_hash("t")
    finally:
        await later.database.dispose()


async def test_rewrapping_in_batches_is_idempotent_and_keeps_values_readable(
    fresh_url: str, tmp_path: Path
) -> None:
    context = build_context(settings_of(fresh_url, tmp_path, OLD))
    engine = KvEngine(context.keyring)
    try:
        await start_services(context)
        async with context.database.session() as session:
            tenant, _ = await ensure_tenant(session, "sealed-test")
            mount = await engine.mount(session, tenant.id, "secret")
            for number in range(7):
                await engine.write(session, mount, f"apps/s{number}", {"n": str(number)})
        tenant_id = tenant.id
    finally:
        await context.database.dispose()

    database = Database.from_settings(settings_of(fresh_url, tmp_path, NEW))
    both = Keyring(NEW, [OLD])
    try:
        before = {c.name: c for c in await count_sealed_values(database, both, batch_size=3)}
        assert before["secrets_versions.sealed"].previous == 7
        first = {c.name: c for c in await rewrap_sealed_values(database, both, batch_size=3)}
        second = {c.name: c for c in await rewrap_sealed_values(database, both, batch_size=3)}
        after = await count_sealed_values(database, Keyring(NEW), batch_size=3)
        async with database.session() as session:
            reader = KvEngine(Keyring(NEW))
            values = [
                (await reader.read(session, tenant_id, "secret", f"apps/s{n}")).data
                for n in range(7)
            ]
    finally:
        await database.dispose()
    assert first["secrets_versions.sealed"].rewrapped == 7
    assert sum(count.rewrapped for count in second.values()) == 0
    assert sum(count.remaining for count in after) == 0
    assert values == [{"n": str(n)} for n in range(7)]
