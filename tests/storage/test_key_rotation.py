"""A master key rotation and stored objects, on SQLite and PostgreSQL: ``keel secrets
rotate-master-key`` re-wraps each version's sealed data key and never rewrites an object's
bytes; afterwards the objects read (whole and by range) with the new key alone."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from keel.app import create_app
from keel.core.crypto import MasterKey
from keel.core.db import Database
from keel.core.sealed import rewrap_sealed_values
from keel.migrations import upgrade
from keel.settings import Settings
from keel.storage.backends import LocalBlobStore
from keel.storage.service.runtime import storage_runtime
from tests.storage.conftest import StorageApi, storage_settings
from tests.support.apps import lifespan_of
from tests.support.clamd import ClamdServer
from tests.support.databases import database_for
from tests.support.keel_process import TEST_MASTER_KEY
from tests.support.tenants import TenantAdmin, make_tenant_admin

OLD = MasterKey.generate()
NEW = MasterKey.generate()
#: Three of the encryption's 1 MiB segments and a bit.
DATA = b"\x00keel-rotation\x00" + os.urandom(3 * 1024 * 1024 + 1000)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def own_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database of this test alone: a rotation re-wraps every row it holds."""
    with database_for(request, "keel_rotation") as url:
        url = url or f"sqlite+aiosqlite:///{tmp_path / 'keel.db'}"

        async def migrate() -> None:
            database = Database.from_settings(Settings(database_url=url))
            try:
                await upgrade(database)
            finally:
                await database.dispose()

        asyncio.run(migrate())
        yield url


@asynccontextmanager
async def serving(
    settings: Settings, admin: TenantAdmin | None = None
) -> AsyncIterator[StorageApi]:
    """An app of ``settings``; the tenant and administrator of an earlier one, or new ones."""
    application = create_app(settings, run_background=False)
    async with lifespan_of(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://keel.test") as http:
            yield StorageApi(http, admin or await make_tenant_admin(application), application)


def keyed(settings: Settings, current: MasterKey, *previous: MasterKey) -> Settings:
    return settings.model_copy(
        update={
            "master_key": SecretStr(current.to_base64()),
            "master_key_previous": (
                SecretStr(",".join(key.to_base64() for key in previous)) if previous else None
            ),
        }
    )


async def test_a_rotation_rewraps_data_keys_and_never_rewrites_objects(
    own_database: str, tmp_path: Path, clamd_server: ClamdServer
) -> None:
    assert OLD.to_base64() != TEST_MASTER_KEY
    base = storage_settings(
        Settings(
            database_url=own_database,
            data_dir=tmp_path / ".keel",
            redis_url=None,
            public_url="http://keel.test",
        ),
        clamd_address=clamd_server.address,
    )
    async with serving(keyed(base, OLD)) as before:
        await before.bucket("vault", scan=False, encrypted=True)
        put = await before.put("vault", "ledger.bin", DATA)
        assert put.status_code == 201, put.text
        [version] = await before.versions("vault")
        sealed_before = version.data_key_sealed
        store = storage_runtime(before.context).blobs
        assert isinstance(store, LocalBlobStore)
        blob = store.path(version.locator)
        stored_before = blob.read_bytes()
        stat_before = blob.stat()
        assert DATA[:4096] not in stored_before  # ciphertext at rest

    async with serving(keyed(base, NEW, OLD), before.admin) as rotating:
        counts = {
            count.name: count
            for count in await rewrap_sealed_values(
                rotating.context.database, rotating.context.keyring, batch_size=2
            )
        }
        assert counts["storage_objects.data_key_sealed"].rewrapped == 1

    async with serving(keyed(base, NEW), before.admin) as after:  # the old key dropped
        [version] = await after.versions("vault")
        assert version.data_key_sealed != sealed_before
        # The object's bytes were never rewritten: the same file, byte for byte.
        assert blob.read_bytes() == stored_before
        assert blob.stat().st_mtime_ns == stat_before.st_mtime_ns
        whole = await after.get("vault", "ledger.bin")
        assert whole.status_code == 200, whole.text
        assert whole.content == DATA
        start, end = 1024 * 1024 - 10, 2 * 1024 * 1024 + 10  # across two segment boundaries
        part = await after.get("vault", "ledger.bin", headers={"Range": f"bytes={start}-{end}"})
        assert part.status_code == 206, part.text
        assert part.content == DATA[start : end + 1]
