"""What the async and sync faces share: the snapshot, its local copy on disk, URLs, parsing
and error translation.

The local copy is one JSON file per application and environment, written atomically (a
temporary file in the same directory, flushed and fsynced, then renamed over the old one) with
mode 0600 in a 0700 directory, so a reader never sees half a file and other users never see
it at all. The clients write it in a worker thread after a change's callbacks
(``keel_client._follower``)::

    {"format": 1, "application": "billing", "environment": "production",
     "revision": 12, "values": {...}, "saved_at": "2026-11-22T10:00:00+00:00"}
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx

from keel_client.config._exceptions import (
    ConfigError,
    ConfigNotFound,
    ConfigPermissionDenied,
    ConfigUnavailable,
)
from keel_client.http import ClientError, KeelHTTPError, ResponseValidationError

__all__ = ["ConfigChange", "LocalCopy", "Snapshot", "changed_keys", "default_cache_path"]

logger = logging.getLogger("keel_client.config")

API_PREFIX = "/config/v1"
FILE_FORMAT = 1
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
#: A key's value when the key is absent (``None`` is a value).
_ABSENT = object()

#: Where a snapshot came from: Keel, or the local copy (Keel was unreachable).
Source = Literal["server", "file"]


def check_name(kind: str, name: str) -> str:
    """``name`` if it is a valid application or environment name; ``ValueError`` otherwise
    (it becomes part of a URL and of the local copy's file name)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid {kind} name {name!r}: 1-63 lowercase letters, digits, '_' and '-'"
        )
    return name


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An environment's values at one revision."""

    application: str
    environment: str
    revision: int
    values: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """What a change callback receives: the client moved from ``old_revision`` to
    ``revision``, and ``keys`` (sorted) are the keys whose values differ between the two
    (added, removed or changed).

    Revisions that came while the client was catching up (after a dropped connection) are
    coalesced into one change: ``old_revision`` is always the previous callback's
    ``revision``, so the callbacks form an unbroken chain and no changed key is missed.
    """

    application: str
    environment: str
    old_revision: int
    revision: int
    keys: tuple[str, ...]


def changed_keys(
    before: Mapping[str, Any], after: Mapping[str, Any], among: Iterable[str] | None = None
) -> tuple[str, ...]:
    """The keys added, removed or changed from ``before`` to ``after``, sorted; with
    ``among`` (the keys a change set touched), only those are compared."""
    if among is not None:
        return tuple(
            sorted(key for key in set(among) if before.get(key, _ABSENT) != after.get(key, _ABSENT))
        )
    return tuple(
        sorted(
            (before.keys() ^ after.keys())
            | {key for key in before.keys() & after.keys() if before[key] != after[key]}
        )
    )


def default_cache_path(
    application: str, environment: str, environ: Mapping[str, str] | None = None
) -> Path:
    """``$XDG_CACHE_HOME/keel/config/<app>-<env>.json`` (``~/.cache`` without the variable)."""
    environ = os.environ if environ is None else environ
    root = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "keel" / "config" / f"{application}-{environment}.json"


class LocalCopyError(ValueError):
    """The local copy is missing or unusable; the message says why (never a value)."""


class LocalCopy:
    """The last known good snapshot of one environment, in a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self, application: str, environment: str) -> Snapshot:
        """The snapshot in the file; :class:`LocalCopyError` when there is none or it is not
        a snapshot of this application and environment."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise LocalCopyError(f"no local copy at {self.path}") from None
        except (OSError, UnicodeDecodeError) as error:
            raise LocalCopyError(
                f"the local copy {self.path} is unreadable ({type(error).__name__})"
            ) from None
        try:
            document = json.loads(text)
        except ValueError:
            raise LocalCopyError(f"the local copy {self.path} is not JSON") from None
        if not isinstance(document, dict) or document.get("format") != FILE_FORMAT:
            raise LocalCopyError(f"the local copy {self.path} is not a Keel config snapshot")
        revision, values = document.get("revision"), document.get("values")
        if (
            isinstance(revision, bool)
            or not isinstance(revision, int)
            or revision < 1
            or not isinstance(values, dict)
        ):
            raise LocalCopyError(f"the local copy {self.path} has no valid revision and values")
        found = (document.get("application"), document.get("environment"))
        if found != (application, environment):
            raise LocalCopyError(
                f"the local copy {self.path} holds {found[0]}/{found[1]}, "
                f"not {application}/{environment}"
            )
        return Snapshot(application, environment, revision, values)

    def write(self, snapshot: Snapshot) -> None:
        """Replace the file with ``snapshot``, atomically, readable by its owner only."""
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        document = {
            "format": FILE_FORMAT,
            "application": snapshot.application,
            "environment": snapshot.environment,
            "revision": snapshot.revision,
            "values": snapshot.values,
            "saved_at": datetime.now(UTC).isoformat(),
        }
        # Encoded before the temporary file exists (a value JSON cannot hold leaves no file),
        # in one call: json.dump would hand the file one small piece at a time, holding the
        # interpreter's lock while the event loop waits for it.
        text = json.dumps(document, separators=(",", ":"))
        # mkstemp creates the file with mode 0600, in the target's directory so the rename
        # stays on one file system (and is atomic).
        descriptor, temporary = tempfile.mkstemp(
            dir=directory, prefix=f".{self.path.name}.", suffix=".tmp"
        )
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise


class ConfigCore:
    """The application and environment a client follows, its URLs, its local copy, and the
    translation of Keel's answers."""

    def __init__(
        self,
        application: str,
        environment: str,
        *,
        cache_path: str | os.PathLike[str] | None,
        persist: bool,
        resolve_secrets: bool,
    ) -> None:
        self.application = check_name("application", application)
        self.environment = check_name("environment", environment)
        self.resolve_secrets = resolve_secrets
        # A snapshot with resolved secret values never goes to disk.
        self.persist = persist and not resolve_secrets
        path = (
            Path(cache_path)
            if cache_path is not None
            else default_cache_path(application, environment)
        )
        self.local = LocalCopy(path)
        base = f"{API_PREFIX}/apps/{quote(application)}/envs/{quote(environment)}"
        self.snapshot_path = base
        self.watch_path = f"{base}/watch"
        #: The ``subject`` of this environment's changes on the config stream.
        self.subject = f"{application}/{environment}"

    def request(self, current: Snapshot | None) -> tuple[dict[str, str], dict[str, str]]:
        """Headers and query parameters of a snapshot read that revalidates ``current``."""
        if self.resolve_secrets:
            return {}, {"resolve_secrets": "true"}
        if current is None:
            return {}, {}
        return {"If-None-Match": f'"{current.revision}"'}, {}

    def parse(self, response: httpx.Response) -> Snapshot:
        """The snapshot of a 200 answer; ``ResponseValidationError`` when it is not one."""
        try:
            body = response.json()
            revision, values = body["revision"], body["values"]
        except (ValueError, KeyError, TypeError) as error:
            raise self._invalid(response, "the answer has no revision and values") from error
        if (
            isinstance(revision, bool)
            or not isinstance(revision, int)
            or not isinstance(values, dict)
        ):
            raise self._invalid(response, "the answer's revision or values have the wrong type")
        return Snapshot(self.application, self.environment, revision, values)

    def translate(self, error: ClientError) -> ConfigError:
        """The config error for a 4xx answer to a snapshot read or a watch."""
        where = f"{self.application}/{self.environment}"
        fields: dict[str, Any] = {
            "application": self.application,
            "environment": self.environment,
            "status": error.status,
            "request_id": error.request_id,
            "method": error.method,
            "url": error.url,
        }
        detail = error.detail or error.title or "refused"
        if error.status == 404:
            return ConfigNotFound(f"config {where}: not found ({detail})", **fields)
        if error.status in (401, 403):
            return ConfigPermissionDenied(
                f"config {where}: permission denied (needs config:{self.application}:read, "
                "or the token is invalid)",
                **fields,
            )
        return ConfigError(f"config {where}: read refused ({detail})", **fields)

    def load_local(self) -> tuple[Snapshot | None, str | None]:
        """The local copy, or ``None`` and why it is unusable (``None`` and ``None`` when
        local copies are off)."""
        if not self.persist:
            return None, None
        try:
            return self.local.read(self.application, self.environment), None
        except LocalCopyError as error:
            return None, str(error)

    def save(self, snapshot: Snapshot) -> None:
        """Write the local copy (blocking: a client calls it in a worker thread); a failure is
        logged, never raised (memory still serves)."""
        if not self.persist:
            return
        try:
            self.local.write(snapshot)
        except OSError as error:
            logger.warning(
                "keel config: could not write the local copy %s (%s: %s)",
                self.local.path,
                type(error).__name__,
                error.strerror or error,
            )

    def unavailable(
        self, server_error: KeelHTTPError, local_problem: str | None
    ) -> ConfigUnavailable:
        where = f"{self.application}/{self.environment}"
        reasons = [f"Keel: {server_error.message}"]
        if self.resolve_secrets:
            reasons.append("no local copy is kept when secrets are resolved")
        elif not self.persist:
            reasons.append("local copies are turned off (persist=False)")
        elif local_problem is not None:
            reasons.append(local_problem)
        return ConfigUnavailable(
            f"no configuration for {where}: {'; '.join(reasons)}",
            reasons=reasons,
            application=self.application,
            environment=self.environment,
        )

    def _invalid(self, response: httpx.Response, message: str) -> ResponseValidationError:
        return ResponseValidationError(
            f"config {self.application}/{self.environment}: {message}",
            errors=[],
            status=response.status_code,
            request_id=response.headers.get("x-request-id"),
        )
