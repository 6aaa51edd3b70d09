"""The settings tree: environment and ``.env``, errors that name the variable, masking."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from keel.settings import Settings, SettingsError, load_settings, mask_url


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No KEEL_ variable or ``.env`` of the machine running the tests leaks in."""
    for name in list(os.environ):
        if name.startswith("KEEL_"):
            monkeypatch.delenv(name)
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return workdir


def load_error(monkeypatch: pytest.MonkeyPatch, **variables: str) -> str:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    return str(raised.value)


class TestInvalidValuesNameTheVariable:
    def test_port_that_is_not_a_number(self, monkeypatch: pytest.MonkeyPatch) -> None:
        assert "KEEL_PORT" in load_error(monkeypatch, KEEL_PORT="abc")

    def test_port_out_of_range(self, monkeypatch: pytest.MonkeyPatch) -> None:
        assert "KEEL_PORT" in load_error(monkeypatch, KEEL_PORT="70000")

    def test_nested_pool_size_of_zero(self, monkeypatch: pytest.MonkeyPatch) -> None:
        message = load_error(monkeypatch, KEEL_DATABASE_POOL__SIZE="0")
        assert "KEEL_DATABASE_POOL__SIZE" in message

    def test_unknown_service(self, monkeypatch: pytest.MonkeyPatch) -> None:
        message = load_error(monkeypatch, KEEL_SERVICES="auth,payroll")
        assert "KEEL_SERVICES" in message
        assert "payroll" in message

    def test_database_url_of_another_database(self, monkeypatch: pytest.MonkeyPatch) -> None:
        message = load_error(monkeypatch, KEEL_DATABASE_URL="mysql://keel:s3cr3t-pw@db/keel")
        assert "KEEL_DATABASE_URL" in message
        assert "sqlite or postgresql" in message
        assert "s3cr3t-pw" not in message

    def test_database_url_that_is_not_a_url(self, monkeypatch: pytest.MonkeyPatch) -> None:
        message = load_error(monkeypatch, KEEL_DATABASE_URL="just some words")
        assert "KEEL_DATABASE_URL" in message

    def test_unknown_log_level(self, monkeypatch: pytest.MonkeyPatch) -> None:
        assert "KEEL_LOG_LEVEL" in load_error(monkeypatch, KEEL_LOG_LEVEL="verbose")

    def test_sample_rate_above_one(self, monkeypatch: pytest.MonkeyPatch) -> None:
        message = load_error(monkeypatch, KEEL_SENTRY__TRACES_SAMPLE_RATE="1.5")
        assert "KEEL_SENTRY__TRACES_SAMPLE_RATE" in message

    def test_every_invalid_variable_is_named_at_once(self, monkeypatch: pytest.MonkeyPatch) -> None:
        message = load_error(monkeypatch, KEEL_PORT="abc", KEEL_MAX_BODY_BYTES="10")
        assert "KEEL_PORT" in message
        assert "KEEL_MAX_BODY_BYTES" in message


class TestSources:
    def test_values_come_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("KEEL_PORT", "9001")
        monkeypatch.setenv("KEEL_DATABASE_POOL__SIZE", "3")
        monkeypatch.setenv("KEEL_SERVICES", " flags , auth,flags ")
        settings = load_settings()
        assert settings.port == 9001
        assert settings.database_pool.size == 3
        assert settings.services == ["flags", "auth"]

    def test_dotenv_file_in_the_working_directory_is_read(self, clean_environment: Path) -> None:
        (clean_environment / ".env").write_text(
            "KEEL_PORT=9123\nKEEL_SERVICES=auth,flags\nKEEL_SENTRY__ENVIRONMENT=staging\n"
        )
        settings = load_settings()
        assert settings.port == 9123
        assert settings.services == ["auth", "flags"]
        assert settings.sentry.environment == "staging"

    def test_environment_overrides_dotenv(
        self, monkeypatch: pytest.MonkeyPatch, clean_environment: Path
    ) -> None:
        (clean_environment / ".env").write_text("KEEL_PORT=9123\n")
        monkeypatch.setenv("KEEL_PORT", "9456")
        assert load_settings().port == 9456

    def test_invalid_value_in_dotenv_names_the_variable(self, clean_environment: Path) -> None:
        (clean_environment / ".env").write_text("KEEL_PORT=eighty\n")
        with pytest.raises(SettingsError, match="KEEL_PORT"):
            load_settings()

    def test_defaults_run_embedded_on_sqlite_under_the_data_dir(self) -> None:
        settings = load_settings(data_dir=Path("/srv/keel"))
        assert settings.effective_database_url == "sqlite+aiosqlite:////srv/keel/keel.db"
        assert settings.is_embedded


class TestDatabaseUrl:
    @pytest.mark.parametrize(
        "pasted",
        [
            "postgresql://keel:pw@db:5432/keel",
            "postgresql+psycopg://keel:pw@db:5432/keel",
            "postgres://keel:pw@db:5432/keel",
        ],
    )
    def test_postgresql_urls_get_the_asyncpg_driver(self, pasted: str) -> None:
        settings = Settings(database_url=pasted)
        assert settings.effective_database_url == "postgresql+asyncpg://keel:pw@db:5432/keel"
        assert not settings.is_embedded

    def test_sqlite_urls_get_the_aiosqlite_driver(self) -> None:
        settings = Settings(database_url="sqlite:////var/lib/keel/keel.db")
        assert settings.effective_database_url == "sqlite+aiosqlite:////var/lib/keel/keel.db"
        assert settings.is_embedded


class TestForwardedAllowIps:
    def test_no_proxy_is_trusted_by_default(self) -> None:
        assert load_settings().forwarded_allow_ips == []

    def test_addresses_and_networks_are_read_comma_separated_and_made_canonical(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KEEL_FORWARDED_ALLOW_IPS", " 10.1.2.3/8, 192.0.2.7 ,::1,10.0.0.0/8")
        assert load_settings().forwarded_allow_ips == ["10.0.0.0/8", "192.0.2.7", "::1"]

    def test_a_star_trusts_every_peer(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("KEEL_FORWARDED_ALLOW_IPS", "*")
        assert load_settings().forwarded_allow_ips == ["*"]

    @pytest.mark.parametrize("value", ["proxy.internal", "10.0.0.0/33", "*,10.0.0.1"])
    def test_what_is_not_an_address_is_refused(
        self, monkeypatch: pytest.MonkeyPatch, value: str
    ) -> None:
        message = load_error(monkeypatch, KEEL_FORWARDED_ALLOW_IPS=value)
        assert "KEEL_FORWARDED_ALLOW_IPS" in message
        assert "not an IP address or network" in message


class TestMaxHeaderBytes:
    def test_defaults_to_32_kib(self) -> None:
        assert load_settings().max_header_bytes == 32_768

    def test_a_limit_too_small_for_a_bearer_token_is_refused(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        assert "KEEL_MAX_HEADER_BYTES" in load_error(monkeypatch, KEEL_MAX_HEADER_BYTES="1000")


class TestMasking:
    def test_masked_settings_contain_no_password_or_dsn(self) -> None:
        settings = Settings(
            database_url="postgresql://keel:db-pass-123@db:5432/keel",
            redis_url="redis://:redis-pass-456@cache:6379/0",
            sentry={"dsn": "https://public-key-789@o1.ingest.sentry.io/42"},
        )
        rendered = json.dumps(settings.masked())
        for secret in ("db-pass-123", "redis-pass-456", "public-key-789"):
            assert secret not in rendered
        masked = settings.masked()
        assert masked["database_url"] == "postgresql+asyncpg://keel:***@db:5432/keel"
        assert masked["redis_url"] == "redis://:***@cache:6379/0"

    def test_repr_of_settings_shows_no_secret(self) -> None:
        settings = Settings(
            database_url="postgresql://keel:db-pass-123@db/keel",
            redis_url="redis://:redis-pass-456@cache:6379/0",
        )
        assert "db-pass-123" not in repr(settings)
        assert "redis-pass-456" not in repr(settings)

    def test_unparseable_url_is_masked_entirely(self) -> None:
        assert mask_url("::not a url with pass::") == "**********"
