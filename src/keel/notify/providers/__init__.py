"""Delivery providers of the notification service: one module per provider, no database.

The service builds a tenant's providers from their stored configuration with
:func:`build_provider` and sends a rendered payload through a channel's ordered list with
:func:`send_with_failover`::

    providers = [build_provider(c.kind, c.settings, creds[c.name], http=shared, name=c.name)
                 for c in channel_config]
    sent = await send_with_failover(providers, payload)

Errors: :class:`ProviderError` (its ``kind`` says retry, slow down, give up on the
recipient, or fix the configuration), :class:`FailoverExhausted`, and
:class:`ProviderConfigError` for unusable settings or credentials.
"""

from keel.notify.providers.base import (
    Attempt,
    Channel,
    ChatPayload,
    EmailPayload,
    ErrorKind,
    FailoverExhausted,
    FcmTarget,
    Payload,
    Provider,
    ProviderConfigError,
    ProviderError,
    PushPayload,
    PushTarget,
    Sent,
    SmsPayload,
    WebPushTarget,
)
from keel.notify.providers.failover import send_with_failover
from keel.notify.providers.registry import (
    PROVIDER_KINDS,
    ConfigField,
    ProviderKind,
    build_provider,
)

__all__ = [
    "PROVIDER_KINDS",
    "Attempt",
    "Channel",
    "ChatPayload",
    "ConfigField",
    "EmailPayload",
    "ErrorKind",
    "FailoverExhausted",
    "FcmTarget",
    "Payload",
    "Provider",
    "ProviderConfigError",
    "ProviderError",
    "ProviderKind",
    "PushPayload",
    "PushTarget",
    "Sent",
    "SmsPayload",
    "WebPushTarget",
    "build_provider",
    "send_with_failover",
]
