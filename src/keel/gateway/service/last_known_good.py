"""The last known good policy on disk: what a gateway replica starts from when the database
is unreachable (``KEEL_GATEWAY__POLICY_CACHE_PATH``, default ``<data_dir>/gateway-policy.json``).

A replica saves every policy it loads; at start-up, if it cannot read the database, it loads
the file and serves that revision until the database answers again. The file is written
atomically (a temporary file renamed over it, so a crash never leaves half a policy) and
readable by its owner only: a header transform may hold a credential. A file that is missing,
unreadable, of another tenant or no longer a valid policy is ignored (``None``), never half
used.

File format::

    {"tenant": "<slug>", "revision": 7, "updated_at": "2026-12-06T17:00:00Z", "policy": {...}}
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from keel.core.logging import get_logger
from keel.gateway.service.policy import PolicySnapshot
from keel_client.edge._model import EdgePolicy

log = get_logger(__name__)


def save_last_known_good(
    path: Path, tenant: str, snapshot: PolicySnapshot, *, tenant_id: str | None = None
) -> None:
    """Keep ``snapshot`` as the tenant's last known good policy (atomically, mode 0600).
    ``tenant_id`` lets a replica started from the copy refuse other tenants' callers before
    its database answers."""
    document = {
        "tenant": tenant,
        "tenant_id": tenant_id,
        "revision": snapshot.revision,
        "updated_at": snapshot.updated_at.isoformat() if snapshot.updated_at else None,
        "policy": snapshot.policy.model_dump(mode="json"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(document, file, separators=(",", ":"))
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_last_known_good(path: Path, tenant: str) -> PolicySnapshot | None:
    """The tenant's last known good policy, or ``None`` when there is none to trust."""
    entry = load_last_known_good_entry(path, tenant)
    return None if entry is None else entry[0]


def load_last_known_good_entry(path: Path, tenant: str) -> tuple[PolicySnapshot, str | None] | None:
    """:func:`load_last_known_good` and the tenant id saved with it (``None`` if none was)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        log.warning(
            "gateway.last_known_good.unreadable", path=str(path), error=type(error).__name__
        )
        return None
    if not isinstance(document, dict) or document.get("tenant") != tenant:
        log.warning("gateway.last_known_good.other_tenant", path=str(path))
        return None
    try:
        revision = int(document["revision"])
        updated_at = document.get("updated_at")
        moment = datetime.fromisoformat(updated_at) if isinstance(updated_at, str) else None
        policy = EdgePolicy.model_validate(document["policy"])  # cross-checks included
    except (KeyError, TypeError, ValueError, ValidationError):
        log.warning("gateway.last_known_good.invalid", path=str(path))
        return None
    tenant_id = document.get("tenant_id")
    return PolicySnapshot(revision, policy, moment), tenant_id if isinstance(
        tenant_id, str
    ) else None
