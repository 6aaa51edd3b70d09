"""The storage service as Keel mounts and runs it: its routes, its runtime (blob store,
scanner, URL signing key) and its tasks on the jobs engine (scans and lifecycle sweeps, run
wherever background work runs: ``keel worker``, and ``keel serve`` on the embedded default)."""

from __future__ import annotations

from sqlalchemy import select

from keel.core.context import AppContext
from keel.core.errors import register_credential_path
from keel.core.services import ServiceSpec
from keel.storage import (
    audit_actions,  # noqa: F401  (registers the catalogue entries)
)
from keel.storage.metrics import storage_metrics
from keel.storage.models import StorageBucket
from keel.storage.service.runtime import STORAGE_RUNTIME, StorageRuntime
from keel.storage.tasks import BACKGROUND, TASKS

# A signed URL's token is its credential: never echoed in a problem's instance or a log.
register_credential_path("/storage/v1/signed/")

#: What the URL signing key is derived from (by the platform's token-hash key, which
#: outlives master key rotations: a rotation does not void the URLs already handed out).
URL_SIGNING_KEY_LABEL = "keel-storage:url-signing"


async def start_storage(context: AppContext) -> None:
    storage_metrics(context)  # registered now, so /metrics lists the series from the start
    if STORAGE_RUNTIME in context.resources:
        return
    from keel.storage.backends import open_blob_store
    from keel.storage.scanning import Clamd

    settings = context.settings
    address = settings.storage.clamd_address
    context.resources[STORAGE_RUNTIME] = StorageRuntime(
        blobs=open_blob_store(settings.storage, settings.data_dir),
        clamd=Clamd(address, timeout=settings.storage.scan_timeout_seconds) if address else None,
        signing_key=context.keyring.token_hash(URL_SIGNING_KEY_LABEL).encode(),
    )


async def stop_storage(context: AppContext) -> None:
    runtime = context.resources.get(STORAGE_RUNTIME)
    if runtime is not None:
        await runtime.aclose()


async def storage_ready(context: AppContext) -> None:
    async with context.database.session() as session:
        await session.execute(select(StorageBucket.id).limit(1).execution_options(all_tenants=True))


service = ServiceSpec(
    name="storage",
    router="keel.storage.router:build_router",
    startup=start_storage,
    shutdown=stop_storage,
    ready_check=storage_ready,
    model_modules=("keel.storage.models",),
    tasks=TASKS,
    background=BACKGROUND,
    # Object bytes are streamed (constant memory) up to the platform's largest object; the
    # service itself applies each bucket's lower limit as the bytes arrive.
    body_limits=lambda settings: {
        "/v1/buckets/*/objects/*": settings.storage.max_object_bytes,
        "/v1/buckets/*/uploads/*/parts/*": settings.storage.max_object_bytes,
        "/v1/signed/*": settings.storage.max_object_bytes,
        "/v1/forms/*": settings.storage.max_object_bytes + 64 * 1024,
    },
)
