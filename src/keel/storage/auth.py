"""Who may do what with storage: ``storage:<scope>:<level>``, one dependency per route.

Scopes: ``buckets`` (``read``: buckets and usage; ``write``: create buckets and change their
policies; ``admin``: delete buckets, set the tenant's quota) and ``objects`` (``read``:
download, list, info, presign downloads; ``write``: upload, delete, multipart, presign
uploads; ``admin``: legal holds, and deleting or shortening under a governance lock with an
explicit bypass). A level includes those below it (``admin`` ⊃ ``write`` ⊃ ``read``); RBAC
wildcards work as everywhere (``storage:*:read``). No level lets anyone read a quarantined
version or touch one under a compliance lock.

Signed URLs and POST forms need no credential: the signature is the credential.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends

from keel.auth.dependencies import Access, CurrentPrincipal, holds_access
from keel.core.errors import Forbidden
from keel_client.auth import Principal


def require_storage_access(scope: str, access: Access) -> Any:
    """403 unless the caller holds ``storage:<scope>:<access>`` or a level above it."""

    async def check(principal: CurrentPrincipal) -> Principal:
        if not holds_access(principal, "storage", scope, access):
            raise Forbidden(f"This needs the permission 'storage:{scope}:{access}'.")
        return principal

    check.__name__ = f"require_storage_{scope}_{access}"
    return Depends(check)


BucketReader = Annotated[Principal, require_storage_access("buckets", Access.read)]
BucketWriter = Annotated[Principal, require_storage_access("buckets", Access.write)]
BucketAdmin = Annotated[Principal, require_storage_access("buckets", Access.admin)]
ObjectReader = Annotated[Principal, require_storage_access("objects", Access.read)]
ObjectWriter = Annotated[Principal, require_storage_access("objects", Access.write)]
ObjectAdmin = Annotated[Principal, require_storage_access("objects", Access.admin)]
