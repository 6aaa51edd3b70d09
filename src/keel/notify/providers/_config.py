"""How a provider declares and validates its settings and credentials.

Each provider module declares two pydantic models: its settings (plain values a tenant's
configuration stores) and its credentials (``SecretStr`` values the secrets service holds).
The registry validates a stored configuration through them, and the API documents a kind
from them. A validation failure becomes one :class:`ProviderConfigError` line naming the
field; pydantic's own input echo is never used, so a credential's value cannot leak into it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from keel.notify.providers.base import ProviderConfigError

#: A provider limit above this is a typo (the fastest relays take thousands a second).
MAX_PROVIDER_RATE_PER_SECOND = 100_000


class ProviderSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: float = 10.0
    """Seconds for one request (connect, write, read each), or one SMTP command."""

    rate_per_second: int | None = Field(default=None, ge=1, le=MAX_PROVIDER_RATE_PER_SECOND)
    """At most this many messages a second go to this provider, counted across every
    replica (Redis when configured); a message over it waits for the next second's share,
    it neither fails nor fails over. None: no limit of Keel's own."""


class ProviderCredentials(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


ModelT = TypeVar("ModelT", bound=BaseModel)


def validate_config(kind: str, what: str, model: type[ModelT], data: Mapping[str, Any]) -> ModelT:
    """``data`` as ``model``, or a ProviderConfigError like
    ``smtp settings: port: Input should be less than or equal to 65535``."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc']) or '(all)'}: {problem['msg']}"
            for problem in error.errors(include_input=False, include_url=False)
        )
        raise ProviderConfigError(f"{kind} {what}: {problems}") from None


def check_base_url(value: str) -> str:
    """An http(s) URL without a trailing slash; the message never repeats the value (a
    webhook URL is a credential)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")
