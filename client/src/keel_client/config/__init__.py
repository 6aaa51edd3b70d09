"""An environment's configuration from Keel, kept current in memory: ``keel_client.config``.

Example::

    from keel_client.config import ConfigClient

    async with ConfigClient.from_env("billing", "production") as config:   # KEEL_URL, KEEL_TOKEN
        workers = config.get("workers", 4)          # a dict lookup, never the network

        @config.on_change
        def changed(change):                        # sync or async
            log.info("config %d -> %d: %s", change.old_revision, change.revision, change.keys)

A service's existing pydantic-settings class reads the same values (needs
``keel-client[settings]``)::

    from keel_client.config import KeelConfigSettingsSource

    class Settings(BaseSettings):
        workers: int = 4

        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings,
                                       dotenv_settings, file_secret_settings):
            return (init_settings, env_settings,
                    KeelConfigSettingsSource(settings_cls, "billing", "production"),
                    dotenv_settings, file_secret_settings)

See ``docs/config.md`` (section "SDK").
"""

from typing import TYPE_CHECKING, Any

from keel_client._env import ENV_TOKEN, ENV_URL
from keel_client.config._client import (
    DEFAULT_START_TIMEOUT,
    ChangeCallback,
    ConfigClient,
    SyncConfigClient,
    load_snapshot,
)
from keel_client.config._exceptions import (
    ConfigError,
    ConfigNotFound,
    ConfigPermissionDenied,
    ConfigUnavailable,
)
from keel_client.config._snapshot import ConfigChange, Snapshot, default_cache_path

if TYPE_CHECKING:
    from keel_client.config._settings import KeelConfigSettingsSource


def __getattr__(name: str) -> Any:
    # pydantic-settings is an optional extra: only the source needs it.
    if name == "KeelConfigSettingsSource":
        from keel_client.config._settings import KeelConfigSettingsSource

        return KeelConfigSettingsSource
    raise AttributeError(f"module 'keel_client.config' has no attribute {name!r}")


__all__ = [
    "DEFAULT_START_TIMEOUT",
    "ENV_TOKEN",
    "ENV_URL",
    "ChangeCallback",
    "ConfigChange",
    "ConfigClient",
    "ConfigError",
    "ConfigNotFound",
    "ConfigPermissionDenied",
    "ConfigUnavailable",
    "KeelConfigSettingsSource",
    "Snapshot",
    "SyncConfigClient",
    "default_cache_path",
    "load_snapshot",
]
