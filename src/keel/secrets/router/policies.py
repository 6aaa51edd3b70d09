"""Vault's ACL policies: ``sys/policy`` and ``sys/policies/acl`` (list, read, write, delete).

The logic is in :mod:`keel.secrets.engines.policies`; this module parses, authorises,
audits and shapes answers.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from keel.core.errors import BadRequest
from keel.secrets.auth import VaultCaller
from keel.secrets.engines.policies import (
    check_policy_name,
    delete_policy,
    parse_policy,
    policy_names,
    read_policy,
    write_policy,
)
from keel.secrets.schemas import PolicyDocument
from keel.secrets.vault_http import (
    VaultRoute,
    add_vault_route,
    no_content,
    read_body,
    vault_data,
)

router = APIRouter(route_class=VaultRoute)


async def _policy_name(name: str) -> str:
    """Checked before the caller is: a malformed name is a 400 to anyone."""
    return check_policy_name(name)


PolicyName = Annotated[str, Depends(_policy_name)]


async def list_policies(call: VaultCaller) -> Response:
    await call.authorize("sys/policies/acl", "list", "secrets.kv.list")
    names = await policy_names(call.session, call.tenant_id)
    return vault_data({"keys": names, "policies": names}, keys=names, policies=names)


async def policy(name: PolicyName, call: VaultCaller) -> Response:
    """Read (``GET``), create or replace (``PUT``, ``POST``: ``{"policy": "<HCL or JSON>"}``)
    or delete (``DELETE``) a policy."""
    method = call.request.method
    path = f"sys/policies/acl/{name}"
    if method == "GET":
        await call.authorize(path, "read", "secrets.kv.read")
        stored = await read_policy(call.session, call.tenant_id, name)
        document = PolicyDocument(name=name, rules=stored.text, policy=stored.text).model_dump()
        return vault_data(document, **document)
    if method == "DELETE":
        await call.authorize(path, "delete", "secrets.policy.write")
        await delete_policy(call.session, call.tenant_id, name)
        call.record("secrets.policy.write", path, operation="delete")
        return no_content()
    body = await read_body(call.request)
    text = body.get("policy", body.get("rules"))
    if not isinstance(text, str):
        raise BadRequest("'policy' is required: the policy's HCL or JSON")
    rules = parse_policy(text)
    await call.authorize(path, "update", "secrets.policy.write")
    await write_policy(call.session, call.tenant_id, name, text, rules)
    call.record("secrets.policy.write", path, operation="write", rules=len(rules))
    return no_content()


add_vault_route(router, "/sys/policy", list_policies, ["GET"])
add_vault_route(router, "/sys/policies/acl", list_policies, ["GET", "LIST"])
for _prefix in ("/sys/policy/{name}", "/sys/policies/acl/{name}"):
    add_vault_route(router, _prefix, policy, ["GET", "PUT", "POST", "DELETE"])
