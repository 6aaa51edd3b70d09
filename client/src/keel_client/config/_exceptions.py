"""Errors raised by ``keel_client.config``.

One base, itself a ``keel_client.http.KeelHTTPError``, so ``except KeelHTTPError`` still
catches everything a Keel client raises::

    KeelHTTPError                       .status .code .request_id (see keel_client.http)
    └── ConfigError                     .application .environment: the configuration concerned
        ├── ConfigNotFound              404: no such application or environment (LookupError)
        ├── ConfigPermissionDenied      403: the caller may not read the application
        └── ConfigUnavailable           neither Keel nor the local copy could give a snapshot

Transport failures, timeouts, an open breaker and 5xx answers stay the base client's errors
(``TransportError``, ``RequestTimeout``, ``CircuitOpenError``, ``ServerError``); a
``ConfigClient`` that already holds a snapshot never raises them: it logs and keeps it.
"""

from __future__ import annotations

from typing import Any

from keel_client.http import KeelHTTPError

__all__ = [
    "ConfigError",
    "ConfigNotFound",
    "ConfigPermissionDenied",
    "ConfigUnavailable",
]


class ConfigError(KeelHTTPError):
    """Base of the config SDK's errors; ``application`` and ``environment`` name what it was
    about.

    Example::

        try:
            await config.start()
        except ConfigError as error:
            sys.exit(f"no configuration for {error.application}/{error.environment}: {error}")
    """

    default_code = "config_error"

    def __init__(
        self,
        message: str,
        *,
        application: str | None = None,
        environment: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.application = application
        self.environment = environment


class ConfigNotFound(ConfigError, LookupError):
    """Keel has no such application or environment (404).

    Example::

        except ConfigNotFound:
            sys.exit("create the environment first: keel config env create billing production")
    """

    default_code = "config_not_found"


class ConfigPermissionDenied(ConfigError):
    """Keel answered 403 (or 401): the credential may not read the application's configuration.

    Example::

        except ConfigPermissionDenied as error:
            log.error("grant config:%s:read to this service", error.application)
    """

    default_code = "config_permission_denied"


class ConfigUnavailable(ConfigError):
    """No snapshot at all: Keel could not be reached and there is no usable local copy.

    ``reasons`` says why each source failed (Keel's error, then the local file's).

    Example::

        try:
            await config.start()
        except ConfigUnavailable as error:
            sys.exit(str(error))    # names the server's failure and the cache file's
    """

    default_code = "config_unavailable"

    def __init__(self, message: str, *, reasons: list[str], **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.reasons = reasons
