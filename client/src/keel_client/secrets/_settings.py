"""``KeelSecretsSettingsSource``: pydantic-settings resolves ``SecretRef`` fields from Keel.

Needs the ``settings`` extra (``pip install keel-client[settings]``). Put the source last in
``settings_customise_sources``, so a value from the init arguments, the environment or a
dotenv file wins, and only the fields nothing else provided are read from Keel::

    class Settings(BaseSettings):
        db_password: SecretStr = SecretRef("apps/billing/db#password")

        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings,
                                       dotenv_settings, file_secret_settings):
            return (init_settings, env_settings, dotenv_settings, file_secret_settings,
                    KeelSecretsSettingsSource(settings_cls))

The secrets are read when ``Settings()`` runs, with one ``SyncSecretsClient`` from ``KEEL_URL``
and ``KEEL_TOKEN`` (or the client given), each distinct secret once and concurrently. Any
field that does not resolve fails the construction with :class:`SecretSettingsError`, which
names every such field and its reference, never a value.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from keel_client._env import env_settings
from keel_client.http import KeelHTTPError
from keel_client.secrets._cache import CacheKey
from keel_client.secrets._client import SyncSecretsClient
from keel_client.secrets._exceptions import (
    SecretNotFound,
    SecretPermissionDenied,
    SecretSettingsError,
)
from keel_client.secrets._references import SecretReference, reference_of

__all__ = ["KeelSecretsSettingsSource"]


class KeelSecretsSettingsSource(PydanticBaseSettingsSource):
    """A pydantic-settings source giving every ``SecretRef`` field its value from Keel.

    ``client`` is used as given and left open (a test's, or one shared at start-up); without
    it a ``SyncSecretsClient.from_env()`` is made for the one resolution and closed after.

    Example::

        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings,
                                       dotenv_settings, file_secret_settings):
            return (init_settings, env_settings, dotenv_settings, file_secret_settings,
                    KeelSecretsSettingsSource(settings_cls))
    """

    def __init__(
        self, settings_cls: type[BaseSettings], client: SyncSecretsClient | None = None
    ) -> None:
        super().__init__(settings_cls)
        self._client = client

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # Unused: __call__ resolves every reference at once (one client, concurrent reads).
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        wanted = self._unresolved_references()
        if not wanted:
            return {}
        owner = self.settings_cls.__name__
        client = self._client
        if client is None:
            try:
                url, token = env_settings()
            except ValueError as error:
                failures = {name: f"{ref}: {error}" for name, ref in wanted.items()}
                raise _failed(owner, failures) from None
            client = SyncSecretsClient(url, auth=token, cache_ttl=0)
        try:
            return self._resolve(owner, client, wanted)
        finally:
            if self._client is None:
                client.close()

    def _unresolved_references(self) -> dict[str, SecretReference]:
        """``{input name: reference}`` of the ``SecretRef`` fields no earlier source set."""
        provided = self.current_state
        wanted = {}
        for name, field in self.settings_cls.model_fields.items():
            reference = reference_of(field)
            if reference is None:
                continue
            alias = field.alias or name
            if name in provided or alias in provided:
                continue
            wanted[alias] = reference
        return wanted

    @staticmethod
    def _resolve(
        owner: str, client: SyncSecretsClient, wanted: dict[str, SecretReference]
    ) -> dict[str, Any]:
        def read(key: CacheKey) -> dict[str, Any] | KeelHTTPError:
            try:
                data: dict[str, Any] = client.get(key[1], mount=key[0])
            except KeelHTTPError as error:
                return error
            return data

        keys = list(dict.fromkeys((ref.mount, ref.path) for ref in wanted.values()))
        workers = min(client.max_concurrency, len(keys))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="keel-secrets") as pool:
            secrets = dict(zip(keys, pool.map(read, keys), strict=True))
        values: dict[str, Any] = {}
        failures: dict[str, str] = {}
        for name, reference in wanted.items():
            found = secrets[(reference.mount, reference.path)]
            if isinstance(found, KeelHTTPError):
                failures[name] = f"{reference}: {_reason(found)}"
            elif reference.key is None:
                values[name] = found
            elif reference.key not in found:
                failures[name] = f"{reference}: the secret has no key {reference.key!r}"
            else:
                values[name] = found[reference.key]
        if failures:
            raise _failed(owner, failures)
        return values


def _reason(error: KeelHTTPError) -> str:
    if isinstance(error, SecretNotFound) and error.key is None and "deleted" not in error.message:
        return "not found"
    if isinstance(error, SecretPermissionDenied):
        return "permission denied (no policy grants read, or the token is invalid)"
    return error.message


def _failed(owner: str, failures: dict[str, str]) -> SecretSettingsError:
    listed = "; ".join(f"{owner}.{name} <- {why}" for name, why in failures.items())
    noun = "secret" if len(failures) == 1 else "secrets"
    return SecretSettingsError(
        f"{len(failures)} {noun} of {owner} could not be read from Keel: {listed}",
        failures=failures,
    )
