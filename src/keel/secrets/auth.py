"""Who calls the secrets API, and may they: Vault's path policies, checked per call.

Every Vault call but ``sys/health`` and the AppRole login declares ``call: VaultCaller``: the
caller authenticated by auth's :data:`~keel.auth.dependencies.CurrentPrincipal` (a Keel token
or API key, sent as ``X-Vault-Token`` or a bearer header), named for the audit trail by
:data:`~keel.auth.dependencies.CallerActor`, in the request's unit of work.

What the caller may do is not a FastAPI permission dependency: a Vault capability depends on
the path and, for a write, on whether the secret exists (``create`` or ``update``). So the
handler asks :meth:`VaultCall.authorize` once it knows both; the rule itself is the pure
:func:`keel.secrets.engines.policies.allowed`. Deny by default: ``secrets:root`` may do all,
others what their policies grant; a denial is audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.dependencies import CallerActor, CurrentPrincipal
from keel.core.audit import Actor, Outcome, record_event, record_event_now
from keel.core.deps import get_context
from keel.secrets.engines.database import DATABASE_RESOURCE, DatabaseEngine
from keel.secrets.engines.kv import SECRETS_RESOURCE, KvEngine
from keel.secrets.engines.policies import ROOT_PERMISSION, allowed, held_policy_names, rules_of
from keel.secrets.vault_http import Denied, VaultSession
from keel_client.auth import Principal


@dataclass
class VaultCall:
    """One authenticated call of the Vault API: who calls, in which tenant and unit of work,
    with the engines of this process."""

    request: Request
    session: AsyncSession
    principal: Principal
    actor: Actor
    kv_engine: KvEngine
    database_engine: DatabaseEngine

    @property
    def tenant_id(self) -> str:
        return self.principal.tenant_id

    async def authorize(self, path: str, capability: str, action: str) -> None:
        """Raise :class:`~keel.secrets.vault_http.Denied` (Vault's 403), recorded as
        ``action`` with outcome ``denied``, unless the caller holds ``capability`` on
        ``path``."""
        if self.principal.has_permission(ROOT_PERMISSION):
            return
        rules = await rules_of(self.session, self.tenant_id, held_policy_names(self.principal))
        if allowed(rules, path, capability):
            return
        await record_event_now(
            self.session,
            outcome=Outcome.DENIED,
            **self._event(action, path, {"capability": capability}),
        )
        raise Denied()

    def record(self, action: str, path: str, **data: Any) -> None:
        """An event stored with this unit of work's commit (a change)."""
        record_event(self.session, **self._event(action, path, data))

    async def record_read(self, action: str, path: str, **data: Any) -> None:
        """An event in the log before the answer (a read: nothing to commit with)."""
        await record_event_now(self.session, **self._event(action, path, data))

    def _event(self, action: str, path: str, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "action": action,
            "actor": self.actor,
            "target_type": "secret_path",
            "target_id": path,
            "data": data or None,
        }


async def vault_caller(
    request: Request,
    session: VaultSession,
    principal: CurrentPrincipal,
    actor: CallerActor,
) -> VaultCall:
    """``async`` so FastAPI calls it inline. A missing or invalid credential is Vault's
    403 (:class:`~keel.secrets.vault_http.VaultRoute` answers the ``Unauthorized``)."""
    resources = get_context(request).resources
    return VaultCall(
        request,
        session,
        principal,
        actor,
        resources[SECRETS_RESOURCE],
        resources[DATABASE_RESOURCE],
    )


#: The authenticated caller of a Vault route: ``call: VaultCaller``.
VaultCaller = Annotated[VaultCall, Depends(vault_caller)]
