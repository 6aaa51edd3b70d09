"""What every service client of the SDK shares about reaching Keel: the environment variables
``from_env()`` reads, how a plain token becomes ``httpx.Auth``, and the rule for a client
given a shared base client (``api=``)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import httpx
from pydantic import SecretStr

from keel_client.http import BearerToken

__all__ = [
    "ENV_CLIENT_ID",
    "ENV_CLIENT_SECRET",
    "ENV_TOKEN",
    "ENV_URL",
    "as_auth",
    "check_api_alone",
    "env_settings",
]

#: The environment variables ``from_env`` reads: Keel's base URL and the service's credential.
ENV_URL = "KEEL_URL"
ENV_TOKEN = "KEEL_TOKEN"  # noqa: S105 - the name of a variable, not a secret
#: A service account's client credentials, which ``keel_client.Keel.from_env`` reads when
#: there is no ``KEEL_TOKEN``.
ENV_CLIENT_ID = "KEEL_CLIENT_ID"
ENV_CLIENT_SECRET = "KEEL_CLIENT_SECRET"  # noqa: S105 - the name of a variable, not a secret


def env_settings(environ: Mapping[str, str] | None = None) -> tuple[str, SecretStr | None]:
    """``(base_url, token)`` from ``KEEL_URL`` and ``KEEL_TOKEN``; ``ValueError`` without a URL."""
    environ = os.environ if environ is None else environ
    url = environ.get(ENV_URL, "").strip()
    if not url:
        raise ValueError(f"{ENV_URL} is not set: it names the Keel server to call")
    token = environ.get(ENV_TOKEN, "").strip()
    return url, SecretStr(token) if token else None


def check_api_alone(base_url: str | None, auth: object, options: Mapping[str, object]) -> None:
    """A client given ``api=`` (a shared base client) takes its URL, credential and HTTP
    options from it: ``ValueError`` when any of them is given besides."""
    if base_url is not None or auth is not None or options:
        raise ValueError("give either base_url, auth and HTTP options, or api=, not both")


def as_auth(auth: str | SecretStr | httpx.Auth | None) -> httpx.Auth | None:
    """``auth`` as given when it is an ``httpx.Auth``; a string or ``SecretStr`` is an API key
    or access token sent as ``Authorization: Bearer``."""
    if auth is None or isinstance(auth, httpx.Auth):
        return auth
    return BearerToken(auth)
