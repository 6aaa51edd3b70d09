"""A SecretRef setting is resolved from Keel when the settings are built: no .env file."""

from __future__ import annotations

from {{ cookiecutter.package_name }}.settings import Settings


def test_the_secret_is_read_from_keel(environment: dict[str, str], payments_secret: str) -> None:
    settings = Settings()
    assert settings.payments_api_key.get_secret_value() == payments_secret
    assert payments_secret not in repr(settings)
    assert payments_secret not in settings.model_dump_json()
