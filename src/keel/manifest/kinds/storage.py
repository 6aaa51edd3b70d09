"""Storage buckets and their policies (a changed policy is replaced at its revision)."""

from __future__ import annotations

from keel.core.errors import KeelError, NotFound
from keel.core.http import etag_for
from keel.manifest.plan import Change, Target
from keel.storage.schemas import BucketPolicy
from keel.storage.service import buckets


async def plan(target: Target) -> list[Change]:
    session, tenant_id, actor = target.session, target.tenant_id, target.actor
    settings = target.settings.storage
    changes: list[Change] = []
    for name, policy in target.loaded.buckets.items():
        assert isinstance(policy, BucketPolicy)
        try:
            buckets.check_policy(policy, platform_max_object_bytes=settings.max_object_bytes)
            buckets.check_scanner(policy, scanner=settings.clamd_address is not None)
        except KeelError as error:
            target.refuse(("buckets", name), str(error.detail or error))
            continue
        try:
            existing = await buckets.get_bucket(session, tenant_id, name)
        except NotFound:
            existing = None
        if existing is not None:
            old = buckets.bucket_policy(existing)
            if old == policy:
                continue
            fields = sorted(
                field
                for field in BucketPolicy.model_fields
                if getattr(old, field) != getattr(policy, field)
            )
        else:
            fields = []
        revision = None if existing is None else existing.revision

        async def put(
            name: str = name, policy: BucketPolicy = policy, revision: int | None = revision
        ) -> None:
            await buckets.put_bucket(
                session,
                tenant_id,
                name,
                policy,
                actor=actor,
                platform_max_object_bytes=settings.max_object_bytes,
                scanner=settings.clamd_address is not None,
                if_match=None if revision is None else etag_for(revision),
            )

        changes.append(Change("+" if existing is None else "~", "bucket", name, put, fields))
    return changes
