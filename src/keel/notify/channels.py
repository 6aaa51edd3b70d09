"""The channels a provider delivers on (the in-app inbox needs none)."""

from __future__ import annotations

from enum import StrEnum


class Channel(StrEnum):
    email = "email"
    sms = "sms"
    push = "push"
    chat = "chat"
