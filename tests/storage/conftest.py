"""Fixtures of the storage service's tests.

``s3_server``: moto's S3 server on 127.0.0.1, started once per test session (per xdist
worker), with a bucket of its own (:class:`tests.support.s3.S3TestServer`). Tests sharing it
keep apart by a prefix of their own: ``s3_server.blob_store(prefix=f"t/{uuid4().hex}")``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import select

from keel.app import create_app
from keel.core.context import AppContext
from keel.core.tenancy import bind_tenant
from keel.jobs.runner import PlatformRunner
from keel.settings import S3Settings, Settings
from keel.storage.backends import LocalBlobStore, S3BlobStore
from keel.storage.models import StorageObject
from keel.storage.service.buckets import get_bucket
from keel.storage.service.runtime import storage_runtime
from keel.storage.tasks import TASKS as STORAGE_TASKS
from tests.support.apps import lifespan_of
from tests.support.clamd import ClamdServer, run_clamd
from tests.support.s3 import S3TestServer, moto_server
from tests.support.tenants import TenantAdmin, make_tenant_admin


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3TestServer]:
    with moto_server() as s3:
        yield s3


# ``clamd_server``: a real clamd on 127.0.0.1 (TCP and a unix socket), started once per test
# session (per xdist worker), with the tests' own signatures (tests.support.clamd).
@pytest.fixture(scope="session")
def clamd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdServer]:
    with run_clamd(tmp_path_factory.mktemp("clamd")) as server:
        yield server


# -- objects and the pipeline (tests/storage/test_objects.py, test_pipeline.py, ...) -----------
#
# ``storage``: an app of the test's settings (``keel serve``'s, without its background work:
# a test runs the scans itself with ``StorageApi.scan``, so what it asserts happened when it
# says so), its clamd the session's real one, a tenant and its administrator. The blob store
# is the local one, or moto's S3 under a prefix of the test's own for tests parametrized
# ``@pytest.mark.parametrize("storage_backend", ["local", "s3"], indirect=True)``.

OBJECTS_API = "/storage/v1"


@dataclass
class StorageApi:
    """The tenant's admin calling the storage API, and the runner that scans."""

    client: httpx.AsyncClient
    admin: TenantAdmin
    app: FastAPI

    @property
    def context(self) -> AppContext:
        context: AppContext = self.app.state.keel
        return context

    @property
    def headers(self) -> dict[str, str]:
        return self.admin.headers

    async def call(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        return await self.client.request(
            method, f"{OBJECTS_API}{path}", headers={**self.headers, **(headers or {})}, **kwargs
        )

    async def bucket(self, name: str, **policy: Any) -> dict[str, Any]:
        answer = await self.call("PUT", f"/buckets/{name}", json=policy)
        assert answer.status_code == 201, answer.text
        document: dict[str, Any] = answer.json()
        return document

    async def put(
        self, bucket: str, key: str, data: bytes, *, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return await self.call(
            "PUT", f"/buckets/{bucket}/objects/{quote(key)}", content=data, headers=headers
        )

    async def get(self, bucket: str, key: str, **kwargs: Any) -> httpx.Response:
        return await self.call("GET", f"/buckets/{bucket}/objects/{quote(key)}", **kwargs)

    async def scan(self) -> int:
        """Run every scan job due now (the jobs runner of ``keel worker``); how many ran."""
        return await PlatformRunner(self.context, list(STORAGE_TASKS)).drain()

    async def versions(self, bucket: str) -> list[StorageObject]:
        """Every version row of the tenant's ``bucket``."""
        async with self.context.database.session() as session:
            bind_tenant(session, self.admin.tenant_id)
            found = await get_bucket(session, self.admin.tenant_id, bucket)
            rows = await session.scalars(
                select(StorageObject).where(StorageObject.bucket_id == found.id)
            )
            return list(rows)

    async def usage(self, bucket: str) -> tuple[int, int]:
        answer = await self.call("GET", f"/buckets/{bucket}")
        assert answer.status_code == 200, answer.text
        return answer.json()["used_bytes"], answer.json()["used_objects"]

    async def blobs(self, bucket: str) -> list[str]:
        """The locators the blob store holds under the bucket."""
        async with self.context.database.session() as session:
            bind_tenant(session, self.admin.tenant_id)
            found = await get_bucket(session, self.admin.tenant_id, bucket)
        store = storage_runtime(self.context).blobs
        prefix = f"{self.admin.tenant_id}/{found.id}"
        if isinstance(store, LocalBlobStore):
            top = store.path(prefix)
            if not top.exists():
                return []
            return sorted(
                str(path.relative_to(store.root)) for path in top.rglob("*") if path.is_file()
            )
        assert isinstance(store, S3BlobStore)
        listing = await asyncio.to_thread(self._s3_keys, store.bucket, f"{store.prefix}{prefix}/")
        return sorted(listing)

    _s3: S3TestServer | None = None

    def _s3_keys(self, bucket: str, prefix: str) -> list[str]:
        assert self._s3 is not None
        found = self._s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for item in found.get("Contents", [])]


@pytest.fixture
def storage_backend(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "local"))


def storage_settings(
    settings: Settings,
    *,
    clamd_address: str | None,
    backend: str = "local",
    s3: S3TestServer | None = None,
    **changes: Any,
) -> Settings:
    """``settings`` with the storage service's: the scanner, the store, and ``changes``."""
    storage: dict[str, Any] = {"clamd_address": clamd_address, "scan_timeout_seconds": 10}
    if backend == "s3":
        assert s3 is not None
        storage |= {
            "backend": "s3",
            "s3": S3Settings(
                endpoint_url=s3.endpoint_url,
                region=s3.region,
                bucket=s3.bucket,
                prefix=f"t-{uuid.uuid4().hex[:12]}",
                access_key_id=s3.access_key_id,
                secret_access_key=SecretStr(s3.secret_access_key),
            ),
        }
    storage |= changes
    return settings.model_copy(update={"storage": settings.storage.model_copy(update=storage)})


@asynccontextmanager
async def storage_api(
    settings: Settings, s3: S3TestServer | None = None
) -> AsyncIterator[StorageApi]:
    application = create_app(settings, run_background=False)
    async with lifespan_of(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://keel.test", timeout=30
        ) as http:
            admin = await make_tenant_admin(application)
            api = StorageApi(http, admin, application)
            api._s3 = s3
            yield api


@pytest.fixture
def storage_changes() -> dict[str, Any]:
    """Storage settings a test file sets for its ``storage`` (none here; override it)."""
    return {}


@pytest.fixture
async def storage(
    request: pytest.FixtureRequest,
    settings: Settings,
    clamd_server: ClamdServer,
    storage_backend: str,
    storage_changes: dict[str, Any],
) -> AsyncIterator[StorageApi]:
    s3 = request.getfixturevalue("s3_server") if storage_backend == "s3" else None
    configured = storage_settings(
        settings,
        clamd_address=clamd_server.address,
        backend=storage_backend,
        s3=s3,
        **storage_changes,
    )
    async with storage_api(configured, s3) as api:
        yield api


@pytest.fixture
def settings(settings: Settings, clamd_server: ClamdServer) -> Settings:
    """The suite's settings with a scanner: a bucket that scans (the default policy) is
    refused where no clamd is configured (tests/storage/test_buckets.py shows the refusal)."""
    return storage_settings(settings, clamd_address=clamd_server.address)
