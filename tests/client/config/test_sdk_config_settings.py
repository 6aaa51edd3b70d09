"""``KeelConfigSettingsSource``: a service's existing pydantic-settings class (the legacy
template's ``Settings`` with a ``.env`` file) filled from Keel at ``Settings()`` time, from
the local copy when Keel is unreachable, and from a running client's memory after a change.

``Settings()`` blocks, so it runs on a worker thread while the test's loop serves Keel."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from keel_client.config import (
    ConfigChange,
    ConfigClient,
    ConfigUnavailable,
    KeelConfigSettingsSource,
)
from keel_client.http import RetryPolicy
from tests.client.config.sdk_config_support import eventually, new_application, write
from tests.support.keel_process import free_port
from tests.support.tenants import TenantAdmin

#: How the settings classes below build their Keel source (set per test).
_source: dict[str, Any] = {}


class Limits(BaseModel):
    per_minute: int
    burst: int = 10


class LegacySettings(BaseSettings):
    """What a service of the fleet already has, plus the one classmethod."""

    model_config = SettingsConfigDict(env_prefix="SDKCFG_TEST_", env_file=None, extra="ignore")

    workers: int = 4
    debug: bool = False
    upstream_timeout: float = 2.5
    limits: Limits = Limits(per_minute=60)
    region: str = "local"
    http_workers: int = 1

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        keel = KeelConfigSettingsSource(
            settings_cls, keys={"http_workers": "http.workers"}, **_source
        )
        return (init_settings, env_settings, keel, dotenv_settings, file_secret_settings)


VALUES = {
    "workers": 8,
    "debug": True,
    "limits": {"per_minute": 600},
    "http.workers": 3,
    "not_a_field": "ignored",
}


@pytest.fixture(autouse=True)
def _reset_source() -> Any:
    yield
    _source.clear()


async def test_a_settings_class_reads_the_snapshot_and_env_still_wins(
    client: httpx.AsyncClient,
    admin: TenantAdmin,
    keel_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = await new_application(client, admin.headers, VALUES)
    cache = tmp_path / "copy.json"
    monkeypatch.setenv("KEEL_URL", keel_url)
    monkeypatch.setenv("KEEL_TOKEN", admin.api_key)
    monkeypatch.setenv("SDKCFG_TEST_REGION", "eu-west-1")
    monkeypatch.setenv("SDKCFG_TEST_DEBUG", "false")  # the environment overrides Keel
    _source.update(application=name, environment="production", cache_path=cache)

    dotenv = tmp_path / ".env"  # the legacy template's file: Keel overrides it
    dotenv.write_text("SDKCFG_TEST_WORKERS=2\nSDKCFG_TEST_UPSTREAM_TIMEOUT=9\n")
    settings = await asyncio.to_thread(lambda: LegacySettings(_env_file=dotenv))
    assert settings.workers == 8
    assert settings.debug is False
    assert settings.limits == Limits(per_minute=600, burst=10)
    assert settings.http_workers == 3  # mapped key
    assert settings.upstream_timeout == 9.0  # not in Keel: the .env file's
    assert settings.region == "eu-west-1"
    assert cache.exists()

    # Keel unreachable: the local copy it wrote serves the next start.
    monkeypatch.setenv("KEEL_URL", f"http://127.0.0.1:{free_port()}")
    _source["retry"] = RetryPolicy(max_retries=0)
    again = await asyncio.to_thread(LegacySettings)
    assert (again.workers, again.http_workers) == (8, 3)

    cache.unlink()
    with pytest.raises(ConfigUnavailable, match="no local copy"):
        await asyncio.to_thread(LegacySettings)


async def test_settings_rebuilt_from_a_running_client_on_each_change(
    client: httpx.AsyncClient, admin: TenantAdmin, keel_url: str, tmp_path: Path
) -> None:
    name = await new_application(client, admin.headers, VALUES)
    current: list[LegacySettings] = []
    async with ConfigClient(
        name, "production", keel_url, auth=admin.api_key, cache_path=tmp_path / "c.json"
    ) as config:
        _source.update(client=config)
        current.append(LegacySettings())  # from memory: no I/O, fine on the loop

        def rebuild(change: ConfigChange) -> None:
            current.append(LegacySettings())

        config.on_change(rebuild)
        await write(client, admin.headers, name, {"workers": 12}, unset=["debug"])
        await eventually(lambda: len(current) == 2)
    assert (current[0].workers, current[0].debug) == (8, True)
    assert (current[1].workers, current[1].debug) == (12, False)


def test_the_source_needs_an_application_and_known_keys() -> None:
    with pytest.raises(TypeError, match="application and environment"):
        KeelConfigSettingsSource(LegacySettings)
    with pytest.raises(ValueError, match=r"keys names no field of LegacySettings: \['nope'\]"):
        KeelConfigSettingsSource(LegacySettings, "billing", "production", keys={"nope": "x"})
