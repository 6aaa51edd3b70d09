"""Password hashing (argon2id at OWASP cost), the password policy and password history."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import select

from keel.auth.models import User
from keel.auth.service.passwords import Passwords, policy_violations
from keel.core.errors import ValidationFailed
from keel.core.tenancy import bind_tenant
from keel.settings import AuthSettings, Settings
from tests.support.apps import running, unit_of_work, with_auth
from tests.support.logins import login
from tests.support.tenants import (
    OTHER_PASSWORD,
    PASSWORD,
    TenantAdmin,
    auth_service,
    create_user,
    make_tenant_admin,
)

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
async def test_argon2id_runs_off_the_event_loop(
    app: FastAPI, client: AsyncClient, admin: TenantAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """argon2id costs each hash tens of milliseconds of CPU: run on the event loop, it would
    stall every other request of the process meanwhile (token checks, secret reads). Every
    hash and verification of a user's creation, login and password change runs on another
    thread. (argon2-cffi's own hasher is watched, and called through.)"""
    threads: list[int] = []
    real_hash, real_verify = PasswordHasher.hash, PasswordHasher.verify

    def watched_hash(hasher: PasswordHasher, password: str | bytes, **kwargs: Any) -> str:
        threads.append(threading.get_ident())
        return real_hash(hasher, password, **kwargs)

    def watched_verify(hasher: PasswordHasher, hashed: str | bytes, password: str | bytes) -> bool:
        threads.append(threading.get_ident())
        return real_verify(hasher, hashed, password)

    monkeypatch.setattr(PasswordHasher, "hash", watched_hash)
    monkeypatch.setattr(PasswordHasher, "verify", watched_verify)
    created = await client.post(
        "/auth/v1/users",
        headers=admin.headers,
        json={"username": "alice", "password": PASSWORD},
    )
    assert created.status_code == 201, created.text
    assert (await login(client, admin.tenant_slug, "alice")).status_code == 200
    assert (await login(client, admin.tenant_slug, "alice", OTHER_PASSWORD)).status_code == 401
    assert (await login(client, admin.tenant_slug, "nobody")).status_code == 401  # the decoy
    assert len(threads) >= 4
    assert threading.get_ident() not in threads
