"""The change filter of one caller's stream (keel.core.changes.CallerChangeFilter): it keeps
what the caller may see and, every ``recheck_seconds``, authenticates the caller again; a
credential that stopped working, another tenant or a lost permission ends the stream."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.changes import Change, StreamClosed, SubjectChanges
from keel.core.db import Database
from keel_client.auth import Principal


def caller(tenant_id: str = "tenant-a", *permissions: str) -> Principal:
    return Principal(
        subject="user-1",
        tenant_id=tenant_id,
        principal_type="user",
        permissions=frozenset(permissions),
    )


class FakeAuth:
    """Authenticates ``valid`` credentials as ``principal``; counts the calls."""

    def __init__(self, principal: Principal | None) -> None:
        self.principal = principal
        self.calls: list[str] = []

    async def authenticate(self, session: AsyncSession, credential: str) -> Principal | None:
        self.calls.append(credential)
        return self.principal


def fake_request(database: Database) -> Any:
    return SimpleNamespace(
        app=SimpleNamespace(state=SimpleNamespace(keel=SimpleNamespace(database=database)))
    )


def change(seq: int, subject: str) -> Change:
    return Change(seq, "flags", subject, {"version": seq})


def watching(
    database: Database, auth: FakeAuth, credential: str | None = "token"
) -> SubjectChanges:
    keep = SubjectChanges(
        fake_request(database),
        caller("tenant-a", "flags:production:read"),
        auth,
        credential,
        subject="production",
        permits=lambda principal: principal.has_permission("flags:production:read"),
    )
    keep.recheck_seconds = 0.0  # every call re-checks
    return keep


async def test_only_the_subjects_changes_are_kept(database: Database) -> None:
    auth = FakeAuth(caller("tenant-a", "flags:production:read"))
    keep = watching(database, auth)
    keep.recheck_seconds = 3600.0

    kept = await keep([change(1, "production"), change(2, "staging"), change(3, "production")])

    assert [item.seq for item in kept] == [1, 3]
    assert auth.calls == []  # not due yet


async def test_a_caller_still_allowed_keeps_watching(database: Database) -> None:
    auth = FakeAuth(caller("tenant-a", "flags:production:read"))
    keep = watching(database, auth)

    assert await keep(()) == []
    assert [item.seq for item in await keep([change(4, "production")])] == [4]
    assert auth.calls == ["token", "token"]


@pytest.mark.parametrize(
    "now",
    [
        pytest.param(None, id="credential-no-longer-works"),
        pytest.param(caller("tenant-b", "flags:production:read"), id="another-tenant"),
        pytest.param(caller("tenant-a", "flags:staging:read"), id="permission-lost"),
    ],
)
async def test_a_caller_that_lost_access_ends_the_stream(
    database: Database, now: Principal | None
) -> None:
    keep = watching(database, FakeAuth(now))

    with pytest.raises(StreamClosed):
        await keep(())


async def test_a_request_without_a_credential_ends_the_stream_at_its_recheck(
    database: Database,
) -> None:
    auth = FakeAuth(caller("tenant-a", "flags:production:read"))
    keep = watching(database, auth, credential=None)

    with pytest.raises(StreamClosed):
        await keep(())
    assert auth.calls == []
