"""Dynamic credentials: a database login issued per caller, held as a lease and renewed.

Keel's database engine speaks Vault's API::

    GET /secrets/v1/<mount>/creds/<role>   → {"lease_id", "lease_duration", "renewable",
                                              "data": {"username", "password"}}
    PUT /secrets/v1/sys/leases/renew       {"lease_id", "increment"}
                                           → {"lease_id", "lease_duration", "renewable"}
    PUT /secrets/v1/sys/leases/revoke      {"lease_id"}

The renewal task wakes at two thirds of the lease's current TTL and asks for another
``increment`` (the first TTL unless told). It stops when the lease is not renewable, when Keel
grants less than it asked for (the role's max TTL caps the lease: renewing again would not
extend it), when Keel refuses the renewal (4xx: the lease is gone), on ``close()`` or
``revoke()``. A failed attempt that may pass later (timeout, 5xx) is tried again, sooner,
until the lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Self

import httpx
from pydantic import SecretStr

from keel_client.http import BaseAPIClient, ClientError, KeelHTTPError, ResponseValidationError

__all__ = ["RENEW_PATH", "REVOKE_PATH", "DynamicCredential", "parse_lease", "renewal_delay"]

logger = logging.getLogger("keel_client.secrets")

RENEW_PATH = "/secrets/v1/sys/leases/renew"
REVOKE_PATH = "/secrets/v1/sys/leases/revoke"
#: Renew when this share of the lease's TTL has passed.
RENEW_AT = 2 / 3
#: After a failed renewal that may pass later, try again after this share of the time left.
RETRY_SHARE = 1 / 3
MIN_RETRY_DELAY = 0.5


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease as Keel granted it: the first grant, or a renewal."""

    lease_id: str
    lease_duration: float
    renewable: bool
    data: dict[str, Any]


def parse_lease(response: httpx.Response, where: tuple[str, str]) -> Lease:
    """The lease in a ``creds`` answer; ``ResponseValidationError`` when it is not one."""
    try:
        body = response.json()
        lease = Lease(
            lease_id=str(body["lease_id"]),
            lease_duration=float(body["lease_duration"]),
            renewable=bool(body.get("renewable", False)),
            data=dict(body["data"]),
        )
        if not isinstance(lease.data.get("username"), str) or not isinstance(
            lease.data.get("password"), str
        ):
            raise TypeError("no username or password")
    except (ValueError, KeyError, TypeError) as error:
        raise ResponseValidationError(
            f"credentials of {where[0]}/{where[1]}: the answer is not a lease with a "
            "username and password",
            errors=[],
            status=response.status_code,
            request_id=response.headers.get("x-request-id"),
        ) from error
    return lease


def _whole_seconds(seconds: float) -> int:
    return max(1, round(seconds))


def renewal_delay(lease_duration: float) -> float:
    """Seconds from a grant to its renewal: two thirds of the TTL."""
    return max(0.0, lease_duration * RENEW_AT)


class DynamicCredential:
    """A database login issued by Keel for this caller alone, renewed in the background.

    ``username`` and ``password`` (a ``SecretStr``) are the login; ``expires_at`` (UTC) moves
    forward with each renewal. Leaving an ``async with`` block revokes the lease, so the
    login stops working at once; :meth:`close` only stops renewing.

    Example::

        async with await secrets.get_dynamic("billing-readonly") as creds:
            connection = await asyncpg.connect(
                dsn, user=creds.username, password=creds.password.get_secret_value()
            )
            ...
    """

    def __init__(
        self,
        api: BaseAPIClient,
        lease: Lease,
        *,
        renew: bool = True,
        increment: float | None = None,
        requested_at: float | None = None,
        on_close: Callable[[DynamicCredential], None] | None = None,
    ) -> None:
        """``api``: the client renewals and the revocation go through. ``requested_at``:
        ``time.monotonic()`` when the lease was asked for. Keel counts the TTL from its side
        of that request, so the lease is counted from the request, not from the answer, which
        a slow issue (seconds, under load) would leave late. ``on_close``: called once the
        renewal stopped (the issuing ``SecretsClient`` forgets the lease)."""
        self._api = api
        self._on_close = on_close
        self.lease_id = lease.lease_id
        self.username = str(lease.data["username"])
        self.password = SecretStr(str(lease.data["password"]))
        #: Any other field the engine returned (never the password).
        self.extra = {k: v for k, v in lease.data.items() if k not in ("username", "password")}
        self.renewable = lease.renewable
        self.lease_duration = lease.lease_duration
        self.increment = increment if increment is not None else lease.lease_duration
        now = time.monotonic()
        self._granted = now if requested_at is None else min(requested_at, now)
        self.expires_at = datetime.now(UTC) + timedelta(
            seconds=lease.lease_duration - (now - self._granted)
        )
        #: Renewals Keel granted so far.
        self.renewals = 0
        self.is_revoked = False
        self._should_renew = renew
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (
            f"DynamicCredential(lease_id={self.lease_id!r}, username={self.username!r}, "
            f"password=SecretStr('**********'), expires_at={self.expires_at.isoformat()})"
        )

    @property
    def is_expired(self) -> bool:
        return self.is_revoked or datetime.now(UTC) >= self.expires_at

    @property
    def is_renewing(self) -> bool:
        """The background renewal is still running."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the background renewal (``get_dynamic`` does)."""
        if self._should_renew and self.renewable and self.lease_duration > 0 and not self._task:
            self._task = asyncio.get_running_loop().create_task(
                self._renew_until_done(), name=f"keel-lease-renewal:{self.lease_id}"
            )

    async def renew(self, increment: float | None = None) -> float:
        """Renew now; returns the TTL Keel granted (capped by the role's max TTL)."""
        asked = _whole_seconds(self.increment if increment is None else increment)
        sent, sent_at = time.monotonic(), datetime.now(UTC)
        response = await self._api.put(
            RENEW_PATH,
            json={"lease_id": self.lease_id, "increment": asked},
            idempotent=True,
        )
        try:
            body = response.json()
            granted = float(body["lease_duration"])
            self.renewable = bool(body.get("renewable", self.renewable))
        except (ValueError, KeyError, TypeError) as error:
            raise ResponseValidationError(
                f"renewal of lease {self.lease_id}: the answer has no lease_duration",
                errors=[],
                status=response.status_code,
            ) from error
        # Counted from the request, as Keel counts it from its side of it.
        self._granted = sent
        self.lease_duration = granted
        self.expires_at = sent_at + timedelta(seconds=granted)
        self.renewals += 1
        return granted

    async def close(self) -> None:
        """Stop renewing; the lease runs until it expires."""
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._on_close is not None:
            self._on_close(self)

    async def revoke(self) -> None:
        """Stop renewing and revoke the lease: Keel drops the login now."""
        await self.close()
        if self.is_revoked:
            return
        await self._api.put(REVOKE_PATH, json={"lease_id": self.lease_id}, idempotent=True)
        self.is_revoked = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        await self.revoke()

    async def _renew_until_done(self) -> None:
        delay = renewal_delay(self.lease_duration)
        while True:
            await asyncio.sleep(max(0.0, self._granted + delay - time.monotonic()))
            asked = _whole_seconds(self.increment)
            try:
                granted = await self.renew(asked)
            except ClientError as error:
                logger.warning(
                    "lease renewal refused; it will expire",
                    extra={"lease_id": self.lease_id, "status": error.status},
                )
                return
            except KeelHTTPError as error:
                left = self.lease_duration - (time.monotonic() - self._granted)
                if left <= MIN_RETRY_DELAY:
                    logger.warning(
                        "lease renewal failed and the lease expired",
                        extra={"lease_id": self.lease_id, "error": error.code},
                    )
                    return
                logger.warning(
                    "lease renewal failed; trying again",
                    extra={"lease_id": self.lease_id, "error": error.code},
                )
                elapsed = time.monotonic() - self._granted
                delay = elapsed + max(MIN_RETRY_DELAY, left * RETRY_SHARE)
                continue
            if not self.renewable or granted <= 0 or granted < asked:
                # The max TTL caps the lease: asking again would not extend it.
                return
            delay = renewal_delay(granted)
