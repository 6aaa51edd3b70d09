"""Roles and permissions: the matching rule, role CRUD with ETags, assignments reaching the
next token, the permission dependency, tenant isolation and scope narrowing."""

from __future__ import annotations

import base64

import httpx
import jwt
import pytest
from fastapi import FastAPI

from keel_client.auth import (
    has_permission,
    is_valid_permission,
    narrow_permissions,
    permission_matches,
)
from tests.support.logins import login_tokens
from tests.support.tenants import (
    TenantAdmin,
    bearer,
    create_api_key,
    create_role,
    create_service_account,
    create_user,
    make_tenant_admin,
)


@pytest.mark.parametrize(
    ("granted", "required", "expected"),
    [
        ("*", "secrets:secret:read", True),
        ("*", "auth", True),
        ("secrets:*", "secrets:secret:read", True),
        ("secrets:*", "secrets:secret", True),
        ("secrets:*", "flags:flag:read", False),
        ("secrets:*", "secrets", False),
        ("secrets:*:read", "secrets:secret:read", True),
        ("secrets:*:read", "secrets:engine:read", True),
        ("secrets:*:read", "secrets:secret:write", False),
        ("secrets:*:read", "secrets:secret:read:extra", False),
        ("secrets:secret:read", "secrets:secret:read", True),
        ("secrets:secret:read", "secrets:secret:write", False),
        ("secrets:secret:read", "secrets:secret", False),
        ("secrets:secret", "secrets:secret:read", False),
        ("secrets:secret:read", "secrets:secret:read:x", False),
        ("secrets", "secrets:secret:read", False),
        ("auth:user:read", "auth:user:*", False),  # a wildcard is only granted, never held
    ],
)
def test_permission_matching(granted: str, required: str, expected: bool) -> None:
    assert permission_matches(granted, required) is expected
    assert has_permission([granted], required) is expected


def test_permission_names_are_validated() -> None:
    assert is_valid_permission("secrets:*:read")
    assert is_valid_permission("*")
    assert not is_valid_permission("Secrets:secret:read")
    assert not is_valid_permission("secrets::read")
    assert not is_valid_permission("a:b:c:d:e:f")
    assert not has_permission([], "secrets:secret:read")


async def test_role_crud_with_if_match(client: httpx.AsyncClient, admin: TenantAdmin) -> None:
    created = await client.post(
        "/auth/v1/roles",
        headers=admin.headers,
        json={"name": "reader", "permissions": ["auth:user:read"], "description": "Reads."},
    )
    assert created.status_code == 201
    assert created.json()["version"] == 1
    fetched = await client.get("/auth/v1/roles/reader", headers=admin.headers)
    assert fetched.status_code == 200
    etag = fetched.headers["etag"]

    updated = await client.put(
        "/auth/v1/roles/reader",
        headers={**admin.headers, "If-Match": etag},
        json={"permissions": ["auth:user:read", "auth:role:read"]},
    )
    assert updated.status_code == 200
    assert updated.json()["permissions"] == ["auth:role:read", "auth:user:read"]
    assert updated.headers["etag"] != etag

    stale = await client.put(
        "/auth/v1/roles/reader",
        headers={**admin.headers, "If-Match": etag},
        json={"permissions": ["*"]},
    )
    assert stale.status_code == 412
    assert stale.headers["content-type"] == "application/problem+json"
    assert stale.json()["type"] == "urn:keel:problem:precondition-failed"
    current = await client.get("/auth/v1/roles/reader", headers=admin.headers)
    assert current.json()["permissions"] == ["auth:role:read", "auth:user:read"]

    invalid = await client.post(
        "/auth/v1/roles", headers=admin.headers, json={"name": "bad", "permissions": ["Nope"]}
    )
    assert invalid.status_code == 422
    duplicate = await client.post("/auth/v1/roles", headers=admin.headers, json={"name": "reader"})
    assert duplicate.status_code == 409

    deleted = await client.delete("/auth/v1/roles/reader", headers=admin.headers)
    assert deleted.status_code == 204
    assert (await client.get("/auth/v1/roles/reader", headers=admin.headers)).status_code == 404


async def test_assignment_changes_the_next_tokens_permissions(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    user = await create_user(app, admin.tenant_id, "alice")
    await create_role(app, admin.tenant_id, "reader", ["auth:user:read"])
    before = await login_tokens(client, admin.tenant_slug, "alice")
    assert (
        jwt.decode(before["access_token"], options={"verify_signature": False})["permissions"] == []
    )

    assigned = await client.post(
        "/auth/v1/roles/reader/assignments",
        headers=admin.headers,
        json={"principal_type": "user", "principal_id": user.id},
    )
    assert assigned.status_code == 204
    during = await login_tokens(client, admin.tenant_slug, "alice")
    claims = jwt.decode(during["access_token"], options={"verify_signature": False})
    assert claims["roles"] == ["reader"]
    assert claims["permissions"] == ["auth:user:read"]

    unassigned = await client.delete(
        f"/auth/v1/roles/reader/assignments/user/{user.id}", headers=admin.headers
    )
    assert unassigned.status_code == 204
    after = (
        await client.post("/auth/v1/refresh", json={"refresh_token": during["refresh_token"]})
    ).json()
    claims = jwt.decode(after["access_token"], options={"verify_signature": False})
    assert claims["roles"] == []
    assert claims["permissions"] == []


async def test_require_permission_answers_403_without_and_200_with(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await create_role(app, admin.tenant_id, "reader", ["auth:user:*"])
    await create_user(app, admin.tenant_id, "alice")
    await create_user(app, admin.tenant_id, "bob", roles=["reader"])
    without = await login_tokens(client, admin.tenant_slug, "alice")
    holder = await login_tokens(client, admin.tenant_slug, "bob")

    refused = await client.get("/auth/v1/users", headers=bearer(without["access_token"]))
    allowed = await client.get("/auth/v1/users", headers=bearer(holder["access_token"]))
    not_covered = await client.get("/auth/v1/roles", headers=bearer(holder["access_token"]))
    anonymous = await client.get("/auth/v1/users")

    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"] == "urn:keel:problem:forbidden"
    assert "auth:user:read" in refused.json()["detail"]
    assert allowed.status_code == 200
    assert {user["username"] for user in allowed.json()} >= {"alice", "bob"}
    assert not_covered.status_code == 403
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"


async def test_tenant_admin_cannot_reach_another_tenants_identities(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    other = await make_tenant_admin(app)
    secret_user = await create_user(app, other.tenant_id, "b-only-user", email="b@example.com")
    await create_role(app, other.tenant_id, "b-only-role", ["secrets:*"])
    key_id, _ = await create_api_key(app, other.tenant_id, other.user_id)
    h = admin.headers

    answers = [
        await client.get(f"/auth/v1/users/{secret_user.id}", headers=h),
        await client.patch(
            f"/auth/v1/users/{secret_user.id}", headers=h, json={"status": "disabled"}
        ),
        await client.post(
            f"/auth/v1/users/{secret_user.id}/password",
            headers=h,
            json={"new_password": "granite-Window-falcon-33"},
        ),
        await client.get("/auth/v1/roles/b-only-role", headers=h),
        await client.put("/auth/v1/roles/b-only-role", headers=h, json={"permissions": ["*"]}),
        await client.delete("/auth/v1/roles/b-only-role", headers=h),
        await client.delete(f"/auth/v1/api-keys/{key_id}", headers=h),
        await client.post(
            "/auth/v1/roles/admin/assignments",
            headers=h,
            json={"principal_type": "user", "principal_id": secret_user.id},
        ),
        await client.post(
            "/auth/v1/api-keys",
            headers=h,
            json={"name": "x", "principal_type": "user", "principal_id": other.user_id},
        ),
    ]

    for answer in answers:
        assert answer.status_code == 404, (answer.request.url, answer.text)
        text = answer.text
        for leak in (other.tenant_id, "b@example.com", other.user_id, "secrets:*"):
            if leak not in str(answer.request.url) and leak not in answer.request.content.decode():
                assert leak not in text
    listed = await client.get("/auth/v1/users", headers=h)
    assert "b-only-user" not in listed.text
    keys = await client.get("/auth/v1/api-keys", headers=h)
    assert key_id not in keys.text
    roles = await client.get("/auth/v1/roles", headers=h)
    assert "b-only-role" not in roles.text
    # Nothing changed in tenant B.
    still = await client.get(f"/auth/v1/users/{secret_user.id}", headers=other.headers)
    assert still.json()["status"] == "active"
    role = await client.get("/auth/v1/roles/b-only-role", headers=other.headers)
    assert role.json()["permissions"] == ["secrets:*"]
    assert (await client.get("/auth/v1/me", headers=other.headers)).status_code == 200


def _basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


async def test_client_credentials_scope_narrows_permissions(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await create_role(app, admin.tenant_id, "reader", ["auth:user:read", "auth:role:read"])
    _, client_id, secret = await create_service_account(
        app, admin.tenant_id, "billing", roles=["reader"]
    )

    async def token(scope: str) -> httpx.Response:
        return await client.post(
            "/auth/v1/oauth/token",
            headers=_basic(client_id, secret),
            data={"grant_type": "client_credentials", "scope": scope},
        )

    async def granted(scope: str) -> tuple[str | None, list[str]]:
        response = await token(scope)
        assert response.status_code == 200, response.text
        claims = jwt.decode(response.json()["access_token"], options={"verify_signature": False})
        assert claims["typ"] == "service_account"
        assert claims["scope"] == response.json().get("scope", "")
        return response.json().get("scope"), claims["permissions"]

    assert await granted("") == (None, ["auth:role:read", "auth:user:read"])
    assert await granted("auth:user:read") == ("auth:user:read", ["auth:user:read"])
    # The answer names the scope granted, not the one asked for (RFC 6749 section 5.1).
    assert await granted("auth:user:read auth:user:delete") == (
        "auth:user:read",
        ["auth:user:read"],
    )
    # Nothing requested is held: refused (RFC 6749 section 5.2), not an empty token.
    refused = await token("auth:user:delete")
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_scope"


@pytest.mark.parametrize(
    ("held", "requested", "expected"),
    [
        (["*"], ["auth:user:read"], ["auth:user:read"]),
        (["*"], ["auth:*"], ["auth:*"]),
        (["auth:user:read", "flags:flag:read"], ["auth:*"], ["auth:user:read"]),
        (["secrets:*:read"], ["secrets:*"], ["secrets:*:read"]),
        (["secrets:secret:read"], ["secrets:secret:write"], []),
        (["auth:user:read"], ["*:user:read"], ["auth:user:read"]),
        (["auth:user:read"], [], []),
    ],
)
def test_narrowing_never_exceeds_the_held_permissions(
    held: list[str], requested: list[str], expected: list[str]
) -> None:
    narrowed = narrow_permissions(held, requested)
    assert narrowed == expected
    assert all(has_permission(held, permission) for permission in narrowed)


async def test_delegated_admin_cannot_grant_what_it_does_not_hold(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await create_role(
        app,
        admin.tenant_id,
        "delegate",
        ["auth:role:assign", "auth:role:update", "auth:role:create", "auth:user:*"],
    )
    await create_role(app, admin.tenant_id, "reader", ["auth:user:read"])
    delegate = await create_user(app, admin.tenant_id, "alice", roles=["delegate"])
    h = bearer((await login_tokens(client, admin.tenant_slug, "alice"))["access_token"])

    self_admin = await client.post(
        "/auth/v1/roles/admin/assignments",
        headers=h,
        json={"principal_type": "user", "principal_id": delegate.id},
    )
    widened = await client.put("/auth/v1/roles/reader", headers=h, json={"permissions": ["*"]})
    created = await client.post(
        "/auth/v1/roles", headers=h, json={"name": "everything", "permissions": ["*"]}
    )
    takeover = await client.post(
        f"/auth/v1/users/{admin.user_id}/password",
        headers=h,
        json={"new_password": "granite-Window-falcon-33"},
    )
    new_admin = await client.post(
        "/auth/v1/users",
        headers=h,
        json={"username": "mallory", "password": "granite-Window-falcon-33", "roles": ["admin"]},
    )
    # The e-mail receives password resets: pointing an admin's at yourself is a takeover.
    email_takeover = await client.patch(
        f"/auth/v1/users/{admin.user_id}", headers=h, json={"email": "mallory@example.com"}
    )
    disabled_admin = await client.patch(
        f"/auth/v1/users/{admin.user_id}", headers=h, json={"status": "disabled"}
    )

    refusals = (self_admin, widened, created, takeover, new_admin, email_takeover, disabled_admin)
    for refused in refusals:
        assert refused.status_code == 403, refused.request.url
        assert refused.json()["type"] == "urn:keel:problem:forbidden"
    me = await client.get(
        "/auth/v1/me",
        headers=bearer((await login_tokens(client, admin.tenant_slug, "alice"))["access_token"]),
    )
    assert me.json()["roles"] == ["delegate"]
    reader = await client.get("/auth/v1/roles/reader", headers=admin.headers)
    assert reader.json()["permissions"] == ["auth:user:read"]
    users = await client.get("/auth/v1/users", headers=admin.headers)
    assert "mallory" not in users.text
    admin_user = await client.get(f"/auth/v1/users/{admin.user_id}", headers=admin.headers)
    assert admin_user.json()["status"] == "active"

    # A user who may do no more than the delegate may have the e-mail changed by it.
    bob = await create_user(app, admin.tenant_id, "bob", roles=["reader"])
    changed = await client.patch(
        f"/auth/v1/users/{bob.id}", headers=h, json={"email": "bob@example.com"}
    )
    assert changed.status_code == 200, changed.text

    # What it holds, it may hand on.
    allowed = await client.post(
        "/auth/v1/roles/reader/assignments",
        headers=h,
        json={"principal_type": "user", "principal_id": delegate.id},
    )
    assert allowed.status_code == 204
