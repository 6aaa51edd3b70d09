"""The secrets service as other services use it: the one door they may go through.

Config resolves the secret references of its values with :class:`SecretReader`, and checks
a reference's mount and path with :func:`check_mount_path` and :func:`check_secret_path`
(the declared edge config → secrets' service). The engines themselves live in
:mod:`keel.secrets.engines`; the Vault API in :mod:`keel.secrets.router`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.audit import Actor, Outcome, record_event_now
from keel.core.errors import NotFound
from keel.secrets import audit_actions  # noqa: F401  (registers secrets.kv.read)
from keel.secrets.engines.kv import (
    SECRETS_RESOURCE,
    KvEngine,
    SecretUnreadable,
    check_mount_path,
    check_secret_path,
)
from keel.secrets.engines.policies import (
    ROOT_PERMISSION,
    Rule,
    allowed,
    held_policy_names,
    rules_of,
)
from keel_client.auth import Principal

if TYPE_CHECKING:
    from keel.core.context import AppContext

__all__ = [
    "FieldRead",
    "SecretReader",
    "check_mount_path",
    "check_secret_path",
    "kv_engine_of",
]


def kv_engine_of(context: AppContext) -> KvEngine:
    """The KV engine of this process, or one of its own where the secrets service is not
    served here (``keel serve --services config``): same database, same master key."""
    return context.resources.get(SECRETS_RESOURCE) or KvEngine(context.keyring)


@dataclass(frozen=True)
class FieldRead:
    """One field of a secret, read for a caller: its value, or why it was left unread."""

    value: Any = None
    #: ``denied``, ``not-found`` or ``unreadable``; ``None`` when the field was read.
    refusal: str | None = None

    @property
    def is_read(self) -> bool:
        return self.refusal is None


class SecretReader:
    """Reads fields of secrets on a caller's behalf as the secrets API would read them for
    it: ``read`` on ``{mount}/data/{path}`` by its policies (or ``secrets:root``), and every
    read or refusal audited (``secrets.kv.read``) before the answer, with ``via`` added to
    the event's data to say who read it.

    Example::

        reader = SecretReader(
            session, kv_engine_of(context), principal, actor,
            via={"via": "config", "config": "billing/prod"},
        )
        found = await reader.read_field("secret", "apps/billing/db", "password")
        if found.is_read:
            use(found.value)
    """

    def __init__(
        self,
        session: AsyncSession,
        engine: KvEngine,
        principal: Principal,
        actor: Actor,
        *,
        via: Mapping[str, Any],
    ) -> None:
        self._session = session
        self._engine = engine
        self._principal = principal
        self._actor = actor
        self._via = dict(via)
        self._is_root = principal.has_permission(ROOT_PERMISSION)
        self._rules: list[Rule] | None = None

    async def read_field(self, mount: str, path: str, field: str) -> FieldRead:
        """The current version's ``field`` of the secret at ``mount``/``path``."""
        return await self._read(mount, path, field)

    async def read_data(self, mount: str, path: str) -> FieldRead:
        """The current version's fields (a dict) of the secret at ``mount``/``path``."""
        return await self._read(mount, path, None)

    async def _read(self, mount: str, path: str, field: str | None) -> FieldRead:
        session, tenant_id = self._session, self._principal.tenant_id
        vault_path = f"{mount}/data/{path}"
        event = {
            "tenant_id": tenant_id,
            "action": "secrets.kv.read",
            "actor": self._actor,
            "target_type": "secret_path",
            "target_id": vault_path,
        }
        if not await self._may_read(vault_path):
            await record_event_now(
                session,
                outcome=Outcome.DENIED,
                data={"capability": "read", **self._via},
                **event,
            )
            return FieldRead(refusal="denied")
        try:
            result = await self._engine.read(session, tenant_id, mount, path)
        except NotFound:
            return FieldRead(refusal="not-found")
        except SecretUnreadable:
            return FieldRead(refusal="unreadable")
        if result.data is None or (field is not None and field not in result.data):
            return FieldRead(refusal="not-found")
        await record_event_now(
            session,
            data={
                "version": result.metadata["version"],
                **({"field": field} if field is not None else {}),
                **self._via,
            },
            **event,
        )
        return FieldRead(result.data[field] if field is not None else dict(result.data))

    async def _may_read(self, vault_path: str) -> bool:
        if self._is_root:
            return True
        if self._rules is None:
            self._rules = await rules_of(
                self._session, self._principal.tenant_id, held_policy_names(self._principal)
            )
        return allowed(self._rules, vault_path, "read")
