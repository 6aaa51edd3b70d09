"""``KeelConfigSettingsSource``: a pydantic-settings class reads its fields from an
environment's configuration in Keel.

Needs the ``settings`` extra (``pip install keel-client[settings]``). The existing
``Settings`` class of a service keeps its fields and defaults; the source gives each field
the value of the key of the same name (or of ``keys={field: key}``, or of the field's alias)
when the snapshot has it::

    class Settings(BaseSettings):
        model_config = SettingsConfigDict(env_file=".env")

        workers: int = 4
        upstream_timeout: float = 2.5

        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings,
                                       dotenv_settings, file_secret_settings):
            return (init_settings, env_settings,
                    KeelConfigSettingsSource(settings_cls, "billing", "production"),
                    dotenv_settings, file_secret_settings)

Earlier sources win: here an environment variable overrides Keel, and Keel overrides the
``.env`` file. The snapshot is read when ``Settings()`` runs (from ``KEEL_URL`` and
``KEEL_TOKEN``), and from the local copy when Keel is unreachable; or, with ``client=``, from
a started ``ConfigClient``'s memory, without any I/O: what a change callback does to build a
fresh ``Settings`` after each new revision.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from keel_client.config._client import ConfigClient, SyncConfigClient, load_snapshot

__all__ = ["KeelConfigSettingsSource"]


class KeelConfigSettingsSource(PydanticBaseSettingsSource):
    """A pydantic-settings source reading fields from Keel's configuration of
    ``application``/``environment``.

    - ``client``: a started :class:`ConfigClient` or :class:`SyncConfigClient` whose current
      values are read (no I/O); ``application`` and ``environment`` are then its own.
    - ``keys``: ``{field name: config key}`` where they differ; otherwise the field's alias,
      else its name, is the key. Keys the class has no field for are ignored.
    - Without a client, one blocking read (:func:`load_snapshot`) with ``cache_path``,
      ``persist``, ``resolve_secrets`` and any other keyword (``base_url``, ``auth``,
      ``BaseAPIClient`` options) as given. Raises ``ConfigUnavailable`` when neither Keel
      nor the local copy has a snapshot, ``ConfigNotFound`` or ``ConfigPermissionDenied``.

    Example::

        KeelConfigSettingsSource(settings_cls, "billing", "production",
                                 keys={"workers": "http.workers"})
    """

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        application: str | None = None,
        environment: str | None = None,
        *,
        client: ConfigClient | SyncConfigClient | None = None,
        keys: Mapping[str, str] | None = None,
        cache_path: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(settings_cls)
        self._client = client
        self._where: tuple[str, str] | None = None
        if client is None:
            if application is None or environment is None:
                raise TypeError("KeelConfigSettingsSource needs application and environment")
            self._where = (application, environment)
        self._keys = dict(keys or {})
        unknown = set(self._keys) - set(settings_cls.model_fields)
        if unknown:
            raise ValueError(f"keys names no field of {settings_cls.__name__}: {sorted(unknown)}")
        self._cache_path = cache_path
        self._options = options

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # Unused: __call__ reads the one snapshot for every field.
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values = self._snapshot_values()
        found: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            key = self._keys.get(name) or field.alias or name
            if key in values:
                found[field.alias or name] = values[key]
        return found

    def _snapshot_values(self) -> Mapping[str, Any]:
        if self._client is not None:
            return self._client.values
        if self._where is None:  # pragma: no cover - the constructor ensures it
            raise TypeError("KeelConfigSettingsSource needs application and environment")
        snapshot, _ = load_snapshot(*self._where, cache_path=self._cache_path, **self._options)
        return snapshot.values
