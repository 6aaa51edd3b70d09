"""``SecretRef`` fields of real ``BaseSettings`` classes resolved from Keel at ``Settings()``
time: against the in-process Keel on SQLite and PostgreSQL (the sync client in a worker
thread), and once against a real ``keel serve`` configured only by ``KEEL_URL`` and
``KEEL_TOKEN``."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from keel_client.secrets import (
    KeelSecretsSettingsSource,
    SecretRef,
    SecretsClient,
    SecretSettingsError,
    SyncSecretsClient,
)
from tests.client.secrets.sdk_secrets_support import BASE_URL, LoopBridgeTransport, member
from tests.support.keel_cli import invoke_keel
from tests.support.keel_process import KeelServer, keel_env, keel_server
from tests.support.tenants import TenantAdmin

#: The client the settings classes below resolve with (set per test).
_client: list[SyncSecretsClient] = []


class _FromKeel(BaseSettings):
    """The recipe of the docs: the Keel source last, so init, env and dotenv win."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        client = _client[0] if _client else None
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            file_secret_settings,
            KeelSecretsSettingsSource(settings_cls, client=client),
        )


class BillingSettings(_FromKeel):
    model_config = {"env_prefix": "BILLING_TEST_"}

    db_password: SecretStr = SecretRef("apps/billing/db#password")
    db_port: int = SecretRef("apps/billing/db#port")
    stripe: dict[str, str] = SecretRef("apps/billing/stripe")
    team_token: SecretStr = SecretRef("billing/token#value", mount="team-kv")
    region: str = "eu-west-1"


class BrokenSettings(_FromKeel):
    model_config = {"env_prefix": "BILLING_TEST_"}

    db_password: SecretStr = SecretRef("apps/billing/db#password")
    api_key: SecretStr = SecretRef("apps/billing/absent#key")
    db_user: str = SecretRef("apps/billing/db#user")


class WithoutTheSource(BaseSettings):
    db_password: SecretStr = SecretRef("apps/billing/db#password")


@pytest.fixture
async def stored(app: FastAPI, admin: TenantAdmin, secrets: SecretsClient) -> dict[str, str]:
    """The billing secrets, written through the SDK; returns the values."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL) as http:
        mounted = await http.post(
            "/secrets/v1/sys/mounts/team-kv",
            headers={"X-Vault-Token": admin.api_key},
            json={"type": "kv", "options": {"version": "2"}},
        )
    assert mounted.status_code == 204, mounted.text
    values = {
        "password": f"pw-{uuid.uuid4().hex}",
        "stripe": f"sk-{uuid.uuid4().hex}",
        "team": f"tt-{uuid.uuid4().hex}",
    }
    await secrets.set("apps/billing/db", {"password": values["password"], "port": "5432"})
    await secrets.set("apps/billing/stripe", {"key": values["stripe"], "account": "acct_1"})
    await secrets.set("billing/token", {"value": values["team"]}, mount="team-kv")
    return values


async def build(settings_class: type[BaseSettings], client: SyncSecretsClient) -> Any:
    """``settings_class()`` in a worker thread, resolving with ``client``."""
    _client[:] = [client]
    try:
        return await asyncio.to_thread(settings_class)
    finally:
        _client.clear()


def bridged(app: FastAPI, key: str) -> tuple[SyncSecretsClient, LoopBridgeTransport]:
    bridge = LoopBridgeTransport(app, asyncio.get_running_loop())
    return SyncSecretsClient(BASE_URL, auth=key, transport=bridge), bridge


async def test_secret_refs_resolve_when_the_settings_are_built(
    app: FastAPI, admin: TenantAdmin, stored: dict[str, str]
) -> None:
    client, bridge = bridged(app, admin.api_key)
    with client:
        settings = await build(BillingSettings, client)

    assert settings.db_password.get_secret_value() == stored["password"]
    assert settings.db_port == 5432  # validated as the field's type
    assert settings.stripe == {"key": stored["stripe"], "account": "acct_1"}
    assert settings.team_token.get_secret_value() == stored["team"]
    assert settings.region == "eu-west-1"
    assert stored["password"] not in repr(settings)
    # Each secret read once, however many fields name it.
    assert bridge.requests[("GET", "/secrets/v1/secret/data/apps/billing/db")] == 1


async def test_a_value_from_the_environment_wins_and_is_not_read_from_keel(
    app: FastAPI,
    admin: TenantAdmin,
    stored: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BILLING_TEST_DB_PASSWORD", "local-override")
    monkeypatch.setenv("BILLING_TEST_DB_PORT", "6543")
    client, bridge = bridged(app, admin.api_key)
    with client:
        settings = await build(BillingSettings, client)

    assert settings.db_password.get_secret_value() == "local-override"
    assert settings.db_port == 6543
    assert settings.stripe["key"] == stored["stripe"]
    assert bridge.requests[("GET", "/secrets/v1/secret/data/apps/billing/db")] == 0


async def test_a_missing_secret_fails_start_up_naming_field_and_path_not_value(
    app: FastAPI, admin: TenantAdmin, stored: dict[str, str]
) -> None:
    client, _ = bridged(app, admin.api_key)
    with client, pytest.raises(SecretSettingsError) as raised:
        await build(BrokenSettings, client)

    message = str(raised.value)
    assert message.startswith("2 secrets of BrokenSettings could not be read from Keel")
    assert "BrokenSettings.api_key <- secret/apps/billing/absent#key: not found" in message
    no_key = "BrokenSettings.db_user <- secret/apps/billing/db#user: the secret has no key 'user'"
    assert no_key in message
    assert "db_password" not in message  # it resolved
    assert set(raised.value.failures) == {"api_key", "db_user"}
    for value in stored.values():
        assert value not in message
        assert value not in repr(raised.value)


async def test_a_refused_secret_fails_start_up_as_permission_denied(
    app: FastAPI, admin: TenantAdmin, stored: dict[str, str]
) -> None:
    key = await member(app, admin, 'path "secret/data/apps/billing/db" { capabilities = ["read"] }')
    client, _ = bridged(app, key)
    with client, pytest.raises(SecretSettingsError) as raised:
        await build(BillingSettings, client)

    assert set(raised.value.failures) == {"stripe", "team_token"}
    assert "BillingSettings.stripe <- secret/apps/billing/stripe: permission denied" in str(
        raised.value
    )
    assert all(value not in str(raised.value) for value in stored.values())


def test_without_the_source_a_secret_ref_field_is_simply_missing() -> None:
    """No placeholder value slips through: the field is required."""
    with pytest.raises(ValidationError, match="db_password"):
        WithoutTheSource()


def test_without_keel_url_start_up_fails_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KEEL_URL", raising=False)
    with pytest.raises(SecretSettingsError) as raised:
        BillingSettings()
    assert "KEEL_URL is not set" in str(raised.value)
    assert "BillingSettings.db_password <- secret/apps/billing/db#password" in str(raised.value)


# --- a real keel serve, configured by the environment alone -------------------------------


@pytest.fixture(scope="module")
def served_keel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KeelServer, str]]:
    directory: Path = tmp_path_factory.mktemp("keel")
    env = keel_env(KEEL_LOG_LEVEL="warning")
    initialised = invoke_keel("init", cwd=directory, env=env)
    assert initialised.returncode == 0, initialised.stderr
    match = re.search(r"admin API key \(shown once, store it now\): (keel_\w+)", initialised.stdout)
    assert match is not None, initialised.stdout
    with keel_server(directory, env) as server:
        yield server, match.group(1)


class ServedSettings(BaseSettings):
    db_password: SecretStr = SecretRef("apps/served/db#password")
    db: dict[str, str] = SecretRef("apps/served/db")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, KeelSecretsSettingsSource(settings_cls))


def test_keel_url_and_keel_token_are_all_a_service_needs(
    served_keel: tuple[KeelServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, admin_key = served_keel
    password = f"pw-{uuid.uuid4().hex}"
    with SyncSecretsClient(server.base_url, auth=admin_key) as admin:
        admin.set("apps/served/db", {"password": password, "user": "svc"})
    monkeypatch.setenv("KEEL_URL", server.base_url)
    monkeypatch.setenv("KEEL_TOKEN", admin_key)

    settings = ServedSettings()

    assert settings.db_password.get_secret_value() == password
    assert settings.db == {"password": password, "user": "svc"}

    monkeypatch.setenv("KEEL_TOKEN", "keel_revoked-or-wrong")
    with pytest.raises(SecretSettingsError) as raised:
        ServedSettings()
    assert "ServedSettings.db_password <- secret/apps/served/db#password: permission denied" in (
        str(raised.value)
    )
    assert password not in str(raised.value)
