"""Every provider kind, what it needs, and how to build one from stored configuration.

The API validates a tenant's provider configuration with :data:`PROVIDER_KINDS` (and
documents it from there); the service builds the provider with :func:`build_provider`
when it sends. Settings are plain values; credentials come from the secrets service.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import BaseModel

from keel.notify.providers._config import validate_config
from keel.notify.providers.base import Channel, Provider, ProviderConfigError
from keel.notify.providers.fcm import FcmCredentials, FcmProvider, FcmSettings
from keel.notify.providers.postmark import (
    PostmarkCredentials,
    PostmarkProvider,
    PostmarkSettings,
)
from keel.notify.providers.ses import SesCredentials, SesProvider, SesSettings
from keel.notify.providers.slack import SlackCredentials, SlackProvider, SlackSettings
from keel.notify.providers.smtp import SmtpCredentials, SmtpProvider, SmtpSettings
from keel.notify.providers.twilio import TwilioCredentials, TwilioProvider, TwilioSettings
from keel.notify.providers.webpush import WebPushCredentials, WebPushProvider, WebPushSettings

Factory = Callable[[str, Any, Any, httpx.AsyncClient | None], Provider[Any]]


@dataclass(frozen=True)
class ConfigField:
    name: str
    required: bool
    description: str | None


@dataclass(frozen=True)
class ProviderKind:
    """One kind of provider: its channel, its settings and credential fields, its factory."""

    kind: str
    channel: Channel
    description: str
    settings_model: type[BaseModel]
    credentials_model: type[BaseModel]
    factory: Factory

    @property
    def settings_fields(self) -> tuple[ConfigField, ...]:
        return _fields(self.settings_model)

    @property
    def credential_fields(self) -> tuple[ConfigField, ...]:
        return _fields(self.credentials_model)

    def settings_schema(self) -> dict[str, Any]:
        """The settings' JSON Schema, for the API's documentation."""
        return self.settings_model.model_json_schema()

    def validate_settings(self, settings: Mapping[str, Any]) -> BaseModel:
        return validate_config(self.kind, "settings", self.settings_model, settings)

    def validate_credentials(self, credentials: Mapping[str, str]) -> BaseModel:
        return validate_config(self.kind, "credentials", self.credentials_model, credentials)


def _fields(model: type[BaseModel]) -> tuple[ConfigField, ...]:
    return tuple(
        ConfigField(name, info.is_required(), info.description)
        for name, info in model.model_fields.items()
    )


def _smtp(
    name: str, settings: Any, credentials: Any, http: httpx.AsyncClient | None
) -> Provider[Any]:
    return SmtpProvider(name, settings, credentials)  # SMTP speaks no HTTP


PROVIDER_KINDS: Mapping[str, ProviderKind] = {
    kind.kind: kind
    for kind in (
        ProviderKind("smtp", Channel.email, "Any SMTP relay", SmtpSettings, SmtpCredentials, _smtp),
        ProviderKind(
            "ses",
            Channel.email,
            "Amazon SES v2 (raw message)",
            SesSettings,
            SesCredentials,
            lambda name, settings, credentials, http: SesProvider(
                name, settings, credentials, http=http
            ),
        ),
        ProviderKind(
            "postmark",
            Channel.email,
            "Postmark email API",
            PostmarkSettings,
            PostmarkCredentials,
            lambda name, settings, credentials, http: PostmarkProvider(
                name, settings, credentials, http=http
            ),
        ),
        ProviderKind(
            "twilio",
            Channel.sms,
            "Twilio Messages API",
            TwilioSettings,
            TwilioCredentials,
            lambda name, settings, credentials, http: TwilioProvider(
                name, settings, credentials, http=http
            ),
        ),
        ProviderKind(
            "fcm",
            Channel.push,
            "Firebase Cloud Messaging HTTP v1",
            FcmSettings,
            FcmCredentials,
            lambda name, settings, credentials, http: FcmProvider(
                name, settings, credentials, http=http
            ),
        ),
        ProviderKind(
            "webpush",
            Channel.push,
            "Web Push with VAPID (RFC 8291, RFC 8292)",
            WebPushSettings,
            WebPushCredentials,
            lambda name, settings, credentials, http: WebPushProvider(
                name, settings, credentials, http=http
            ),
        ),
        ProviderKind(
            "slack",
            Channel.chat,
            "Slack-compatible incoming webhook",
            SlackSettings,
            SlackCredentials,
            lambda name, settings, credentials, http: SlackProvider(
                name, settings, credentials, http=http
            ),
        ),
    )
}


def build_provider(
    kind: str,
    settings: Mapping[str, Any],
    credentials: Mapping[str, str],
    *,
    http: httpx.AsyncClient | None = None,
    name: str | None = None,
) -> Provider[Any]:
    """A ready provider of ``kind`` (named ``name``, default the kind).

    Raises :class:`ProviderConfigError` with one line naming the bad field for an unknown
    kind, bad settings or missing or malformed credentials. ``http`` is the shared client
    HTTP providers send with (the caller closes it); without one each owns a client that
    its ``aclose`` closes.
    """
    provider_kind = PROVIDER_KINDS.get(kind)
    if provider_kind is None:
        known = ", ".join(sorted(PROVIDER_KINDS))
        raise ProviderConfigError(f"unknown provider kind {kind!r} (known: {known})")
    valid_settings = provider_kind.validate_settings(settings)
    valid_credentials = provider_kind.validate_credentials(credentials)
    return provider_kind.factory(name or kind, valid_settings, valid_credentials, http)
