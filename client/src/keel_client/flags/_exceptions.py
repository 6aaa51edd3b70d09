"""Errors raised by the flags SDK (``FlagsClient.start()`` only: evaluation never raises).

One base, itself a ``keel_client.http.KeelHTTPError``, so ``except KeelHTTPError`` still
catches everything a Keel client raises::

    KeelHTTPError                       .status .code .request_id (see keel_client.http)
    └── FlagsError                      .environment: the environment concerned
        ├── FlagsNotFound               404: no such environment (LookupError)
        ├── FlagsPermissionDenied       401/403: the credential may not read the environment
        └── FlagsUnavailable            neither Keel nor the local copy could give a snapshot

A client that holds a snapshot never raises these later: it logs and keeps serving it.
"""

from __future__ import annotations

from typing import Any

from keel_client.http import KeelHTTPError

__all__ = ["FlagsError", "FlagsNotFound", "FlagsPermissionDenied", "FlagsUnavailable"]


class FlagsError(KeelHTTPError):
    """Base of the flags SDK's errors; ``environment`` names the environment.

    Example::

        try:
            await flags.start()
        except FlagsError as error:
            log.warning("flags of %s unavailable, serving defaults: %s", error.environment, error)
    """

    default_code = "flags_error"

    def __init__(self, message: str, *, environment: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.environment = environment


class FlagsNotFound(FlagsError, LookupError):
    """Keel has no such flags environment (404).

    Example::

        except FlagsNotFound:
            sys.exit("create it first: keel flags envs create production")
    """

    default_code = "flags_not_found"


class FlagsPermissionDenied(FlagsError):
    """Keel answered 401 or 403: the credential may not read the environment.

    Example::

        except FlagsPermissionDenied as error:
            log.error("grant flags:%s:read to this service", error.environment)
    """

    default_code = "flags_permission_denied"


class FlagsUnavailable(FlagsError):
    """No snapshot at all: Keel could not be reached and there is no usable local copy.
    ``reasons`` says why each source failed (Keel's error, then the local file's).

    Example::

        except FlagsUnavailable as error:
            sys.exit(str(error))
    """

    default_code = "flags_unavailable"

    def __init__(self, message: str, *, reasons: list[str], **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.reasons = reasons
