"""Errors raised by ``keel_client.secrets``.

One base, itself a ``keel_client.http.KeelHTTPError``, so ``except KeelHTTPError`` still
catches everything a Keel client raises::

    KeelHTTPError                       .status .code .request_id (see keel_client.http)
    └── SecretsError                    .mount .path .key: the secret a call was about
        ├── SecretNotFound              404, a deleted latest version, or no such key (LookupError)
        ├── SecretPermissionDenied      403: no policy grants it, or the token is invalid
        ├── CheckAndSetConflict         a write's ``cas`` did not match the current version
        └── SecretSettingsError         a ``SecretRef`` of a settings class did not resolve

Transport failures, timeouts, an open breaker and 5xx answers stay the base client's errors
(``TransportError``, ``RequestTimeout``, ``CircuitOpenError``, ``ServerError``).

No message ever holds a secret value: only mounts, paths, keys, field names and Keel's own
error strings, which name paths and never values.
"""

from __future__ import annotations

from typing import Any

from keel_client.http import KeelHTTPError

__all__ = [
    "CheckAndSetConflict",
    "SecretNotFound",
    "SecretPermissionDenied",
    "SecretSettingsError",
    "SecretsError",
]


class SecretsError(KeelHTTPError):
    """Base of the errors about one secret; ``mount``, ``path`` and ``key`` name it.

    Example::

        try:
            password = await secrets.get("apps/billing/db", "password")
        except SecretsError as error:
            log.error("secret unavailable", path=error.path, code=error.code)
    """

    default_code = "secrets_error"

    def __init__(
        self,
        message: str,
        *,
        mount: str | None = None,
        path: str | None = None,
        key: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.mount = mount
        self.path = path
        self.key = key


class SecretNotFound(SecretsError, LookupError):
    """Nothing at the path (404), its latest version is deleted, or the secret has no such key.

    Example::

        try:
            token = await secrets.get("apps/billing/stripe", "token")
        except SecretNotFound:
            token = None
    """

    default_code = "secret_not_found"


class SecretPermissionDenied(SecretsError):
    """Keel answered 403: no policy of the caller grants the capability, or the token is invalid.

    Example::

        except SecretPermissionDenied as error:
            log.error("policy missing", path=error.path)
    """

    default_code = "secret_permission_denied"


class CheckAndSetConflict(SecretsError):
    """A write's check-and-set did not hold: ``cas`` is not the current version (``cas=0``
    and the secret exists), or the mount requires ``cas`` and none was given.

    Example::

        try:
            await secrets.set("apps/billing/db", {"password": new}, cas=3)
        except CheckAndSetConflict:
            ...  # someone else wrote version 4 first: read again, decide again
    """

    default_code = "check_and_set_conflict"

    def __init__(self, message: str, *, cas: int | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.cas = cas


class SecretSettingsError(SecretsError):
    """A settings class could not be built: one or more ``SecretRef`` fields did not resolve.

    ``failures`` maps each field name to why (its reference and the reason, never a value).
    The message names every field and reference, so the start-up log says what to fix.

    Example::

        try:
            settings = Settings()
        except SecretSettingsError as error:
            sys.exit(str(error))
    """

    default_code = "secret_settings_error"

    def __init__(self, message: str, *, failures: dict[str, str], **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.failures = failures
