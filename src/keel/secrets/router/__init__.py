"""HashiCorp Vault's HTTP API under ``/secrets/v1/``: KV version 2, the database engine and
leases, ACL policies, AppRole, and Keel's rotation and change-stream extensions.

Point a Vault client at ``http://<keel>/secrets`` and it works unchanged: ``hvac``, the
``vault`` CLI (``VAULT_ADDR``), Vault Agent. Bodies, status codes and the ``{"errors": [...]}``
shape are Vault's, not Keel's problem+json (:mod:`keel.secrets.vault_http`). Callers
authenticate with ``X-Vault-Token`` or a bearer header holding any Keel token or API key
(:mod:`keel.secrets.auth`).

One module per part of the API, each with its ``router``:

==============  ==========================================================================
``system``      ``sys/health``, ``auth/token/lookup-self``, ``sys/mounts``
``policies``    ``sys/policy``, ``sys/policies/acl``
``approle``     ``auth/approle/...``
``database``    ``<mount>/config|roles|creds/...``, ``sys/leases/...``
``rotation``    ``<mount>/rotation|rotate/...``, ``sys/changes`` (Keel's extensions)
``kv``          ``<mount>/config`` and the catch-all ``<mount>/<operation>/<path>``
==============  ==========================================================================
"""

from __future__ import annotations

from fastapi import APIRouter

from keel.core.http import ServiceRouter
from keel.secrets.router import approle, database, kv, policies, rotation, system
from keel.secrets.vault_http import VaultRoute


def build_router() -> APIRouter:
    """The service's router. FastAPI tries routes in order: the hot path (a secret's read)
    first, ahead of some seventy others; KV's catch-all last."""
    router = ServiceRouter(prefix="/v1", tags=["secrets (Vault KV v2)"], route_class=VaultRoute)
    # Documented through the catch-all.
    router.add_api_route(kv.READ_PATH, kv.read_secret, methods=["GET"], include_in_schema=False)
    for part in (system, policies, approle, database, rotation, kv):
        router.include_router(part.router)
    return router
