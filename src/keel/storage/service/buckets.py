"""Buckets: their names, policies (with the rules a policy change must keep), and lookups
the rest of the service uses (``get_bucket``, ``bucket_policy``)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.errors import NotFound
from keel.storage.models import StorageBucket
from keel.storage.schemas import BucketPolicy


async def get_bucket(
    session: AsyncSession, tenant_id: str, name: str, *, for_update: bool = False
) -> StorageBucket:
    """The tenant's bucket called ``name``; ``NotFound`` otherwise (another tenant's too)."""
    statement = select(StorageBucket).where(
        StorageBucket.tenant_id == tenant_id, StorageBucket.name == name
    )
    if for_update:
        statement = statement.with_for_update()
    bucket = await session.scalar(statement)
    if bucket is None:
        raise NotFound(f"No bucket named {name!r}.")
    return bucket


def bucket_policy(bucket: StorageBucket) -> BucketPolicy:
    """The bucket's policy as the wire model (stored as its JSON)."""
    return BucketPolicy.model_validate(bucket.policy)
