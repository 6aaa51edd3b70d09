"""Password hashing (argon2id at OWASP cost), the password policy and password history."""

from __future__ import annotations

import asyncio
import time

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import select

from auth.conftest import (
    OTHER_PASSWORD,
    PASSWORD,
    TenantAdmin,
    auth_service,
    create_user,
    login,
    make_tenant_admin,
    running,
    unit_of_work,
    with_auth,
)
from keel.auth.models import User
from keel.auth.passwords import Passwords, policy_violations
from keel.core.errors import ValidationFailed
from keel.core.tenancy import bind_tenant
from keel.settings import AuthSettings, Settings

PASSWORDS = Passwords(AuthSettings())
CHEAP_PASSWORDS = Passwords(AuthSettings(argon2_time_cost=1, argon2_memory_kib=1024))


def test_hash_is_argon2id_at_owasp_minimum_cost() -> None:
    encoded = PASSWORDS.hash(PASSWORD)
    assert encoded.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert PASSWORD not in encoded


def test_verify_accepts_the_password_and_refuses_others() -> None:
    encoded = PASSWORDS.hash(PASSWORD)
    assert PASSWORDS.verify(encoded, PASSWORD) is True
    assert PASSWORDS.verify(encoded, OTHER_PASSWORD) is False
    assert PASSWORDS.verify("not an argon2 hash", PASSWORD) is False


def test_missing_hash_verifies_against_the_decoy_and_is_never_valid() -> None:
    # The account-less path hashes too; not even the decoy's own password gets in.
    assert PASSWORDS.verify(None, PASSWORD) is False
    assert PASSWORDS.verify(None, "keel decoy password, never valid") is False


def test_hash_of_a_cheaper_cost_needs_rehash() -> None:
    assert PASSWORDS.needs_rehash(CHEAP_PASSWORDS.hash(PASSWORD)) is True
    assert PASSWORDS.needs_rehash(PASSWORDS.hash(PASSWORD)) is False


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("short-Pw1", "at least 12 characters"),
        ("Administrator", "too common"),
        ("xx-alice.smith-xx", "must not contain the username"),
        ("xx-asmith-mail-xx", "must not contain the username or e-mail name"),
        ("abababababababab", "too few distinct characters"),
    ],
)
def test_policy_refuses_weak_passwords(password: str, message: str) -> None:
    violations = policy_violations(
        password, username="alice.smith", email="asmith@example.com", min_length=12
    )
    assert any(message in violation for violation in violations), violations
    with pytest.raises(ValidationFailed):
        PASSWORDS.check_policy(password, username="alice.smith", email="asmith@example.com")


def test_policy_accepts_a_strong_password() -> None:
    assert policy_violations(PASSWORD, username="alice", email=None, min_length=12) == []
    PASSWORDS.check_policy(PASSWORD, username="alice")


async def test_password_history_refuses_reuse_of_the_last_n(settings: Settings) -> None:
    third = "copper-Lantern-meadow-15"
    async with running(with_auth(settings, password_history=2)) as (app, _client):
        admin = await make_tenant_admin(app)
        user = await create_user(app, admin.tenant_id, "alice", password=PASSWORD)
        auth = auth_service(app)
        async with unit_of_work(app) as session:
            await auth.set_password(session, admin.tenant_id, user.id, OTHER_PASSWORD)
        async with unit_of_work(app) as session:
            with pytest.raises(ValidationFailed, match="differ from the last 2"):
                await auth.set_password(session, admin.tenant_id, user.id, PASSWORD)
        async with unit_of_work(app) as session:
            await auth.set_password(session, admin.tenant_id, user.id, third)
        # Only the last two (OTHER_PASSWORD, third) are remembered: the first is allowed again.
        async with unit_of_work(app) as session:
            with pytest.raises(ValidationFailed):
                await auth.set_password(session, admin.tenant_id, user.id, OTHER_PASSWORD)
        async with unit_of_work(app) as session:
            await auth.set_password(session, admin.tenant_id, user.id, PASSWORD)


async def test_login_rehashes_a_password_stored_at_an_older_cost(
    app: FastAPI, client: AsyncClient, admin: TenantAdmin
) -> None:
    user = await create_user(app, admin.tenant_id, "alice")
    async with unit_of_work(app) as session:
        bind_tenant(session, admin.tenant_id)
        row = await session.scalar(select(User).where(User.id == user.id))
        assert row is not None
        row.password_hash = CHEAP_PASSWORDS.hash(PASSWORD)

    assert (await login(client, admin.tenant_slug, "alice")).status_code == 200

    async with unit_of_work(app) as session:
        bind_tenant(session, admin.tenant_id)
        stored = await session.scalar(select(User.password_hash).where(User.id == user.id))
    assert stored is not None
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert PASSWORDS.verify(stored, PASSWORD)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_login_leaves_the_event_loop_free_while_argon2id_runs(settings: Settings) -> None:
    """argon2id costs each login tens of milliseconds of CPU. Run on the event loop it would
    stall every other request of the process meanwhile (token checks, secret reads); it runs
    on threads instead. At a cost raised so one verification takes a few hundred
    milliseconds, the loop is never held for even half of one."""
    costly = with_auth(settings, argon2_time_cost=8, argon2_memory_kib=65536)
    async with running(costly) as (app, client):
        admin = await make_tenant_admin(app)
        await create_user(app, admin.tenant_id, "alice", password=PASSWORD)
        passwords = auth_service(app).passwords
        started = time.perf_counter()
        passwords.verify(passwords.hash(PASSWORD), PASSWORD)
        one_verification = (time.perf_counter() - started) / 2
        longest_hold = 0.0
        logged_in = asyncio.Event()

        async def watch_the_loop() -> None:
            nonlocal longest_hold
            while not logged_in.is_set():
                before = time.perf_counter()
                await asyncio.sleep(0)
                longest_hold = max(longest_hold, time.perf_counter() - before)

        watcher = asyncio.create_task(watch_the_loop())
        answers = await asyncio.gather(
            *(login(client, admin.tenant_slug, "alice") for _ in range(2))
        )
        logged_in.set()
        await watcher
    assert [answer.status_code for answer in answers] == [200, 200]
    assert longest_hold < one_verification / 2, (longest_hold, one_verification)
