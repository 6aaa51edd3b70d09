"""Rows with a ``version``: changed only by a writer that read the current one, answered
with that version as their ``ETag``.

A service reads a row, checks the caller's ``If-Match`` against its version
(:func:`keel.core.http.check_if_match`), works out the new values, then writes them with
:func:`update_versioned_row`. The update names the version it read, so of two concurrent
writers that read the same version only one moves it on; the other answers 412. A router
answers the row (or its schema) through :func:`with_etag`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from keel.core.db import utcnow
from keel.core.errors import PreconditionFailed
from keel.core.http import etag_for


async def update_versioned_row(
    session: AsyncSession, row: Any, values: Mapping[str, Any], *, changed_message: str
) -> int:
    """Write ``values`` to ``row`` (a mapped object with ``id``, ``version`` and
    ``updated_at``) and move its version on by one, unless another writer moved it since
    ``row`` was read: then ``PreconditionFailed(changed_message)``. The new version.

    The session's copy of ``row`` is not refreshed (``session.refresh(row)`` reads it)."""
    model = type(row)
    version: int = row.version
    moved = await session.execute(
        update(model)
        .where(model.id == row.id, model.version == version)
        .values(**values, version=version + 1, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if getattr(moved, "rowcount", 1) != 1:
        raise PreconditionFailed(changed_message)
    return version + 1


class Versioned(Protocol):
    @property
    def version(self) -> int: ...


VersionedT = TypeVar("VersionedT", bound=Versioned)


def with_etag(resource: VersionedT, response: Response) -> VersionedT:
    """``resource`` as the answer, its version as the strong ``ETag``."""
    response.headers["ETag"] = etag_for(resource.version)
    return resource
