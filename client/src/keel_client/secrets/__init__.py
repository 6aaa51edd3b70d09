"""Read and write secrets in Keel from a service: ``keel_client.secrets``.

Example::

    from keel_client.secrets import SecretsClient

    async with SecretsClient.from_env() as secrets:          # KEEL_URL, KEEL_TOKEN
        password = await secrets.get("apps/billing/db", "password")

Settings resolved from Keel at start-up (needs ``keel-client[settings]``)::

    from pydantic import SecretStr
    from pydantic_settings import BaseSettings
    from keel_client.secrets import KeelSecretsSettingsSource, SecretRef

    class Settings(BaseSettings):
        db_password: SecretStr = SecretRef("apps/billing/db#password")

        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings,
                                       dotenv_settings, file_secret_settings):
            return (init_settings, env_settings, dotenv_settings, file_secret_settings,
                    KeelSecretsSettingsSource(settings_cls))

See ``docs/secrets.md`` (section "SDK").
"""

from typing import TYPE_CHECKING, Any

from keel_client.secrets._cache import SecretCache
from keel_client.secrets._client import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_CACHE_TTL,
    DEFAULT_MOUNT,
    ENV_TOKEN,
    ENV_URL,
    SecretsClient,
    SyncSecretsClient,
)
from keel_client.secrets._dynamic import DynamicCredential
from keel_client.secrets._exceptions import (
    CheckAndSetConflict,
    SecretNotFound,
    SecretPermissionDenied,
    SecretsError,
    SecretSettingsError,
)
from keel_client.secrets._references import SecretRef, SecretReference, parse_reference

if TYPE_CHECKING:
    from keel_client.secrets._settings import KeelSecretsSettingsSource


def __getattr__(name: str) -> Any:
    # pydantic-settings is an optional extra: only the source needs it.
    if name == "KeelSecretsSettingsSource":
        from keel_client.secrets._settings import KeelSecretsSettingsSource

        return KeelSecretsSettingsSource
    raise AttributeError(f"module 'keel_client.secrets' has no attribute {name!r}")


__all__ = [
    "DEFAULT_CACHE_SIZE",
    "DEFAULT_CACHE_TTL",
    "DEFAULT_MOUNT",
    "ENV_TOKEN",
    "ENV_URL",
    "CheckAndSetConflict",
    "DynamicCredential",
    "KeelSecretsSettingsSource",
    "SecretCache",
    "SecretNotFound",
    "SecretPermissionDenied",
    "SecretRef",
    "SecretReference",
    "SecretSettingsError",
    "SecretsClient",
    "SecretsError",
    "SyncSecretsClient",
    "parse_reference",
]
