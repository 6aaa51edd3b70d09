"""No principal ends up with a permission it did not hold: role changes (adding or removing),
assignments, unassignments and credentials all need holding what they touch, the built-in
``admin`` role keeps ``*`` and a holder, and ``keel auth restore-admin`` breaks glass.

The invariant is checked against sequences of calls, not single requests: a role manager tries
every order of the moves that once made it an administrator (empty ``admin``, assign it,
mint a key for an administrator, the operator restoring ``*``) and their variants.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from keel.auth.models import PrincipalType
from keel.auth.service import ADMIN_ROLE
from keel.auth.service.bootstrap import restore_admin
from keel.core.tenancy import bind_tenant
from tests.support.apps import unit_of_work
from tests.support.tenants import (
    TenantAdmin,
    auth_service,
    bearer,
    create_api_key,
    create_role,
    create_service_account,
    create_user,
)

ROLE_MANAGER = [
    "auth:role:update",
    "auth:role:assign",
    "auth:role:read",
    "auth:role:delete",
    "auth:api_key:create",
]


@dataclass
class Attacker:
    account_id: str
    headers: dict[str, str]


async def role_manager(app: FastAPI, admin: TenantAdmin) -> Attacker:
    """A service account holding only role-management permissions, with an API key."""
    await create_role(app, admin.tenant_id, "role-manager", ROLE_MANAGER)
    await create_role(app, admin.tenant_id, "payments", ["secrets:payments:read", "flags:*"])
    account_id, _, _ = await create_service_account(
        app, admin.tenant_id, "mallory", roles=["role-manager"]
    )
    _, key = await create_api_key(
        app, admin.tenant_id, account_id, principal_type=PrincipalType.service_account
    )
    return Attacker(account_id, bearer(key))


async def held_permissions(client: httpx.AsyncClient, headers: dict[str, str]) -> set[str]:
    me = await client.get("/auth/v1/me", headers=headers)
    assert me.status_code == 200, me.text
    return set(me.json()["permissions"])


async def etag_of(client: httpx.AsyncClient, admin: TenantAdmin, role: str) -> str:
    return (await client.get(f"/auth/v1/roles/{role}", headers=admin.headers)).headers["etag"]


async def test_emptying_the_admin_role_is_refused(
    client: httpx.AsyncClient, app: FastAPI, admin: TenantAdmin
) -> None:
    attacker = await role_manager(app, admin)
    etag = await etag_of(client, admin, ADMIN_ROLE)
    emptied = await client.put(
        f"/auth/v1/roles/{ADMIN_ROLE}",
        headers={**attacker.headers, "If-Match": etag},
        json={"permissions": []},
    )
    assert emptied.status_code == 403, emptied.text
    # Not even an administrator may take '*' from the built-in role.
    narrowed = await client.put(
        f"/auth/v1/roles/{ADMIN_ROLE}", headers=admin.headers, json={"permissions": ["auth:*"]}
    )
    assert narrowed.status_code == 409, narrowed.text
    assert (await client.get("/auth/v1/roles/admin", headers=admin.headers)).json()[
        "permissions"
    ] == ["*"]
    # ... and so the moves that followed the emptying stay refused.
    assign = await client.post(
        f"/auth/v1/roles/{ADMIN_ROLE}/assignments",
        headers=attacker.headers,
        json={"principal_type": "service_account", "principal_id": attacker.account_id},
    )
    assert assign.status_code == 403
    key = await client.post(
        "/auth/v1/api-keys",
        headers=attacker.headers,
        json={"name": "x", "principal_type": "user", "principal_id": admin.user_id},
    )
    assert key.status_code == 403


async def test_removing_a_permission_one_does_not_hold_is_refused(
    client: httpx.AsyncClient, app: FastAPI, admin: TenantAdmin
) -> None:
    attacker = await role_manager(app, admin)
    removed = await client.put(
        "/auth/v1/roles/payments",
        headers=attacker.headers,
        json={"permissions": ["secrets:payments:read"]},
    )
    assert removed.status_code == 403, removed.text
    assert "flags:*" in removed.json()["detail"]
    deleted = await client.delete("/auth/v1/roles/payments", headers=attacker.headers)
    assert deleted.status_code == 403
    # What it holds itself it may change: its own role, narrowed.
    narrowed = await client.put(
        "/auth/v1/roles/role-manager",
        headers=attacker.headers,
        json={"permissions": ["auth:role:read", "auth:role:update"]},
    )
    assert narrowed.status_code == 200, narrowed.text


async def test_the_admin_role_cannot_be_deleted_or_left_without_a_holder(
    client: httpx.AsyncClient, app: FastAPI, admin: TenantAdmin
) -> None:
    deleted = await client.delete(f"/auth/v1/roles/{ADMIN_ROLE}", headers=admin.headers)
    assert deleted.status_code == 409
    last = await client.delete(
        f"/auth/v1/roles/{ADMIN_ROLE}/assignments/user/{admin.user_id}", headers=admin.headers
    )
    assert last.status_code == 409, last.text
    assert "needs a holder" in last.json()["detail"]

    second = await create_user(app, admin.tenant_id, "second-admin", roles=[ADMIN_ROLE])
    handed_over = await client.delete(
        f"/auth/v1/roles/{ADMIN_ROLE}/assignments/user/{admin.user_id}", headers=admin.headers
    )
    assert handed_over.status_code == 204
    async with unit_of_work(app) as session:
        bind_tenant(session, admin.tenant_id)
        roles, _ = await auth_service(app).roles_and_permissions(
            session, PrincipalType.user, second.id
        )
    assert roles == [ADMIN_ROLE]


async def test_unassigning_a_role_one_does_not_hold_is_refused(
    client: httpx.AsyncClient, app: FastAPI, admin: TenantAdmin
) -> None:
    attacker = await role_manager(app, admin)
    user = await create_user(app, admin.tenant_id, "paula", roles=["payments"])
    removed = await client.delete(
        f"/auth/v1/roles/payments/assignments/user/{user.id}", headers=attacker.headers
    )
    assert removed.status_code == 403


# -- the invariant, over sequences --------------------------------------------------------------

Move = Callable[[httpx.AsyncClient, Attacker, TenantAdmin], Awaitable[httpx.Response]]


async def empty_admin(
    client: httpx.AsyncClient, me: Attacker, admin: TenantAdmin
) -> httpx.Response:
    return await client.put(
        f"/auth/v1/roles/{ADMIN_ROLE}", headers=me.headers, json={"permissions": []}
    )


async def empty_payments(
    client: httpx.AsyncClient, me: Attacker, admin: TenantAdmin
) -> httpx.Response:
    return await client.put("/auth/v1/roles/payments", headers=me.headers, json={"permissions": []})


async def add_star_to_own_role(
    client: httpx.AsyncClient, me: Attacker, admin: TenantAdmin
) -> httpx.Response:
    return await client.put(
        "/auth/v1/roles/role-manager",
        headers=me.headers,
        json={"permissions": [*ROLE_MANAGER, "*"]},
    )


async def assign_admin_to_self(
    client: httpx.AsyncClient, me: Attacker, admin: TenantAdmin
) -> httpx.Response:
    return await client.post(
        f"/auth/v1/roles/{ADMIN_ROLE}/assignments",
        headers=me.headers,
        json={"principal_type": "service_account", "principal_id": me.account_id},
    )


async def assign_payments_to_self(
    client: httpx.AsyncClient, me: Attacker, admin: TenantAdmin
) -> httpx.Response:
    return await client.post(
        "/auth/v1/roles/payments/assignments",
        headers=me.headers,
        json={"principal_type": "service_account", "principal_id": me.account_id},
    )


async def key_for_admin(
    client: httpx.AsyncClient, me: Attacker, admin: TenantAdmin
) -> httpx.Response:
    return await client.post(
        "/auth/v1/api-keys",
        headers=me.headers,
        json={"name": "x", "principal_type": "user", "principal_id": admin.user_id},
    )


async def delete_admin_role(
    client: httpx.AsyncClient, me: Attacker, admin: TenantAdmin
) -> httpx.Response:
    return await client.delete(f"/auth/v1/roles/{ADMIN_ROLE}", headers=me.headers)


async def unassign_the_admin(
    client: httpx.AsyncClient, me: Attacker, admin: TenantAdmin
) -> httpx.Response:
    return await client.delete(
        f"/auth/v1/roles/{ADMIN_ROLE}/assignments/user/{admin.user_id}", headers=me.headers
    )


async def operator_restores_admin(
    client: httpx.AsyncClient, me: Attacker, admin: TenantAdmin
) -> httpx.Response:
    """The operator's own move: put ``*`` back on ``admin`` (a no-op while it holds it)."""
    return await client.put(
        f"/auth/v1/roles/{ADMIN_ROLE}", headers=admin.headers, json={"permissions": ["*"]}
    )


MOVES: list[Move] = [
    empty_admin,
    empty_payments,
    add_star_to_own_role,
    assign_admin_to_self,
    assign_payments_to_self,
    key_for_admin,
    delete_admin_role,
    unassign_the_admin,
    operator_restores_admin,
]


async def test_no_sequence_of_role_moves_gives_the_manager_a_permission_it_did_not_hold(
    client: httpx.AsyncClient, app: FastAPI, admin: TenantAdmin
) -> None:
    attacker = await role_manager(app, admin)
    held_at_start = await held_permissions(client, attacker.headers)
    assert held_at_start == set(ROLE_MANAGER)
    rng = random.Random(16)
    sequences = [list(order) for order in itertools.permutations(MOVES[:4])]
    sequences += [rng.sample(MOVES, k=len(MOVES)) for _ in range(12)]
    for sequence in sequences:
        for move in sequence:
            response = await move(client, attacker, admin)
            assert response.status_code < 500, (move.__name__, response.text)
            held = await held_permissions(client, attacker.headers)
            assert held <= held_at_start, (move.__name__, held - held_at_start)
            for minted in [response.json().get("key")] if response.status_code == 201 else []:
                assert await held_permissions(client, bearer(minted)) <= held_at_start
        admin_role = await client.get(f"/auth/v1/roles/{ADMIN_ROLE}", headers=admin.headers)
        assert admin_role.json()["permissions"] == ["*"]
        assert "*" in await held_permissions(client, admin.headers)


async def test_restore_admin_breaks_glass_after_the_role_was_emptied_in_the_database(
    client: httpx.AsyncClient, app: FastAPI, admin: TenantAdmin, tmp_path: Path
) -> None:
    auth = auth_service(app)
    async with unit_of_work(app) as session:
        # What no API call can do any more, but someone with the database can.
        role = await auth.get_role(session, admin.tenant_id, ADMIN_ROLE)
        role.permissions = []
    assert "*" not in await held_permissions(client, admin.headers)
    user = await create_user(app, admin.tenant_id, "rescuer")
    async with unit_of_work(app) as session:
        assert await restore_admin(auth, session, admin.tenant_id, "rescuer") == user.id
    assert "*" in await held_permissions(client, admin.headers)
    async with unit_of_work(app) as session:
        bind_tenant(session, admin.tenant_id)
        roles, permissions = await auth.roles_and_permissions(session, PrincipalType.user, user.id)
    assert (roles, permissions) == ([ADMIN_ROLE], ["*"])


async def test_restore_admin_names_an_unknown_user(app: FastAPI, admin: TenantAdmin) -> None:
    from keel.core.errors import NotFound

    with pytest.raises(NotFound, match="nobody"):
        async with unit_of_work(app) as session:
            await restore_admin(auth_service(app), session, admin.tenant_id, "nobody")
