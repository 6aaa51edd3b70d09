"""Settings read Keel's configuration of the service (keel.toml's [config.values])."""

from __future__ import annotations

import pytest

from {{ cookiecutter.package_name }}.settings import ENV_PREFIX, Settings


def test_settings_come_from_keels_configuration(environment: dict[str, str]) -> None:
    settings = Settings()
    assert settings.greeting == "hello from Keel"  # not the class's default, "hello"
    assert settings.page_size == 20


def test_the_environment_overrides_keel(
    environment: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"{ENV_PREFIX}GREETING", "from the environment")
    assert Settings().greeting == "from the environment"
