"""The service's settings, from (the first that has a value wins):

- arguments, then environment variables prefixed ``{{ cookiecutter.package_name|upper }}_``;
{%- if cookiecutter.use_config %}
- Keel's configuration of app ``{{ cookiecutter.project_slug }}`` in the service's environment;
{%- endif %}
{%- if cookiecutter.use_secrets %}
- Keel's secrets, for the ``SecretRef`` fields (resolved when ``Settings()`` runs).
{%- endif %}

There is no ``.env`` file: a secret is never written next to the code. Keel's address and
the service's credential come from ``KEEL_URL`` and ``KEEL_TOKEN`` (or ``KEEL_CLIENT_ID`` and
``KEEL_CLIENT_SECRET``), read by ``Keel.from_env()``.
"""

from __future__ import annotations

import os
from functools import lru_cache
{%- if cookiecutter.use_audit or cookiecutter.use_flags %}
from pathlib import Path
{%- endif %}
{% if cookiecutter.use_config %}
from keel_client.config import KeelConfigSettingsSource
{%- endif %}
{%- if cookiecutter.use_secrets %}
from keel_client.secrets import KeelSecretsSettingsSource, SecretRef
from pydantic import SecretStr
{%- endif %}
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

#: The service's name in Keel: its service account, gateway pool and resources' prefix.
SERVICE = "{{ cookiecutter.project_slug }}"
ENV_PREFIX = "{{ cookiecutter.package_name|upper }}_"
{%- if cookiecutter.use_secrets %}
#: Where the payment provider's key lives in Keel (mount ``secret``).
PAYMENTS_SECRET = "apps/{{ cookiecutter.project_slug }}/payments"
{%- endif %}


def environment() -> str:
    """The Keel environment the service runs in (config values, flags)."""
    return os.environ.get(f"{ENV_PREFIX}ENVIRONMENT", "development")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    environment: str = "development"
    log_level: str = "INFO"
{%- if cookiecutter.use_audit %}
    #: The audit recorder's local journal: one directory per running process.
    audit_spool_dir: Path = Path("var/audit-spool")
{%- endif %}
{%- if cookiecutter.use_flags %}
    #: Where the flags client keeps its last snapshot (a start while Keel is away).
    flags_cache_dir: Path = Path("var/flags")
{%- endif %}
{%- if cookiecutter.use_config %}
    # From Keel's configuration (keel.toml's [config.values.<environment>]):
    greeting: str = "hello"
    page_size: int = 20
{%- endif %}
{%- if cookiecutter.use_secrets %}
    # From Keel's secrets: resolved when Settings() runs, never from a file.
    payments_api_key: SecretStr = SecretRef(f"{PAYMENTS_SECRET}#api_key")
{%- endif %}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier sources win: arguments, then the environment, then Keel. No dotenv source.
{%- if cookiecutter.use_config %}
        # persist=False: no local copy of the configuration; a start without Keel fails
        # loudly instead of running on values nobody can see (pass cache_path= to keep one).
{%- endif %}
        return (
            init_settings,
            env_settings,
{%- if cookiecutter.use_config %}
            KeelConfigSettingsSource(settings_cls, SERVICE, environment(), persist=False),
{%- endif %}
{%- if cookiecutter.use_secrets %}
            KeelSecretsSettingsSource(settings_cls),
{%- endif %}
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
