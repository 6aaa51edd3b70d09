"""The edge rules: no NUL, no lone surrogate, no JSON nested too deep, no integer beyond what a
column holds — refused with a 400 at every service, on SQLite and PostgreSQL, and nothing
refused or accepted can make a later read fail.

Each finding of issue 16 (3, 4 and 5) is a case here: they answered 500 before.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from keel.core.errors import PROBLEM_CONTENT_TYPE
from keel.core.input_rules import (
    MAX_JSON_DEPTH,
    InputRefused,
    check_body,
    check_json_value,
    check_target,
)
from tests.support.tenants import TenantAdmin, make_tenant_admin

# -- the rules themselves -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "refusal"),
    [
        (b'{"a": "x\\u0000"}', "NUL"),
        (b'{"a": "\\udfff"}', "lone surrogate"),
        (b'{"a": "\\ud800"}', "lone surrogate"),
        (b'{"a": "\\ud800\\u0041"}', "lone surrogate"),
        (b'{"a": "\xed\xa0\x80"}', "not valid UTF-8"),
        (b'{"a": "\xff"}', "not valid UTF-8"),
        (b'{"a": "x\x00"}', "NUL"),
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), "deeper than"),
        (b'{"a":' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 1), "deeper than"),
    ],
)
def test_bodies_that_break_a_rule_are_refused(body: bytes, refusal: str) -> None:
    with pytest.raises(InputRefused, match=refusal):
        check_body(body, "application/json")
    # Vault's clients send JSON under any media type or none: the body decides.
    with pytest.raises(InputRefused, match=refusal):
        check_body(body, None)


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": "\\\\u0000"}',  # an escaped backslash, then the text u0000
        b'{"a": "\\ud83d\\ude00"}',  # a surrogate pair: one emoji
        b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}',
        b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH,
        '{"name": "Zoë 🚀"}'.encode(),
        b"grant_type=client_credentials&scope=a+b",
    ],
)
def test_bodies_within_the_rules_pass(body: bytes) -> None:
    check_body(body, "application/json")


def test_form_fields_are_checked_once_decoded_and_binary_bodies_not_at_all() -> None:
    with pytest.raises(InputRefused, match="form field"):
        check_body(b"client_id=kc_%00x", "application/x-www-form-urlencoded")
    check_body(b"\x00\xff\xfe", "application/octet-stream")  # binary: theirs to carry


def test_the_target_is_checked_decoded() -> None:
    with pytest.raises(InputRefused, match="path"):
        check_target("/config/v1/apps/bil\x00ling", b"")
    with pytest.raises(InputRefused, match="query"):
        check_target("/audit/v1/events", b"action=a%00b")
    check_target("/audit/v1/events", b"action=a%20b")


def test_parsed_values_from_elsewhere_meet_the_same_rules_without_recursion() -> None:
    deep: Any = "leaf"
    for _ in range(5_000):  # far past Python's recursion limit
        deep = [deep]
    with pytest.raises(InputRefused, match="deeper"):
        check_json_value(deep)
    with pytest.raises(InputRefused, match="lone surrogate"):
        check_json_value({"key": ["\udfff"]})
    with pytest.raises(InputRefused, match="NUL"):
        check_json_value({"k\x00ey": 1})
    check_json_value({"key": ["Zoë", {"nested": [1, 2.5, None, True]}]})


# -- at every service, on both databases ---------------------------------------------------------

NUL = "\u0000"


@pytest.fixture
async def admin(app: FastAPI) -> TenantAdmin:
    return await make_tenant_admin(app)


def nul_requests(admin: TenantAdmin) -> list[tuple[str, str, dict[str, Any]]]:
    """``(method, path, httpx options)`` of the requests that answered 500 on PostgreSQL."""
    auth = {"headers": admin.headers}
    return [
        ("POST", "/auth/v1/login", {"json": {"tenant": admin.tenant_slug, "username": f"ali{NUL}ce",
                                             "password": "x" * 12}}),
        ("POST", "/auth/v1/login", {"json": {"tenant": f"def{NUL}ault", "username": "alice",
                                             "password": "x" * 12}}),
        ("POST", "/auth/v1/password-reset", {"json": {"tenant": admin.tenant_slug,
                                                      "email": f"a{NUL}@example.com"}}),
        ("POST", "/auth/v1/oauth/token", {"content": b"grant_type=client_credentials"
                                          b"&client_id=kc_%00x&client_secret=s",
                                          "headers": {"content-type":
                                                      "application/x-www-form-urlencoded"}}),
        ("GET", "/config/v1/apps/bil%00ling", auth),
        ("GET", "/flags/v1/flags/f%00a", auth),
        ("POST", "/flags/v1/flags", {**auth, "json": {"key": f"f{NUL}a"}}),
        ("POST", "/flags/v1/flags", {**auth, "json": {"key": "fa", "description": f"d{NUL}"}}),
        ("POST", "/config/v1/apps", {**auth, "json": {"name": f"app{NUL}"}}),
        ("POST", "/auth/v1/users", {**auth, "json": {"username": f"u{NUL}"}}),
        ("POST", "/auth/v1/api-keys", {**auth, "json": {"name": f"k{NUL}"}}),
        ("PUT", "/secrets/v1/sys/policies/acl/p", {"headers": {"X-Vault-Token": admin.api_key},
                                                   "json": {"policy": f'path "a{NUL}" {{}}'}}),
        ("GET", "/audit/v1/events?action=a%00b", auth),
    ]  # fmt: skip


async def assert_refused_as_bad_request(response: httpx.Response) -> None:
    assert response.status_code == 400, (response.request.url, response.text)
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert response.json()["type"] == "urn:keel:problem:malformed-body"


async def test_nul_anywhere_is_a_400_at_every_service(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    for method, path, options in nul_requests(admin):
        await assert_refused_as_bad_request(await client.request(method, path, **options))


async def reads_that_must_keep_working(client: httpx.AsyncClient, admin: TenantAdmin) -> None:
    vault = {"X-Vault-Token": admin.api_key}
    for path, headers in [
        ("/config/v1/apps/shop/envs/prod", admin.headers),
        ("/config/v1/apps/shop/envs/prod/revisions", admin.headers),
        ("/secrets/v1/secret/data/apps/db", vault),
        ("/flags/v1/flags", admin.headers),
        ("/audit/v1/events", admin.headers),
    ]:
        response = await client.get(path, headers=headers)
        assert response.status_code == 200, (path, response.text)


async def test_nothing_refused_or_stored_can_break_a_later_read(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    vault = {"X-Vault-Token": admin.api_key}
    headers = admin.headers
    assert (await client.post("/config/v1/apps", headers=headers, json={"name": "shop"})).is_success
    created = await client.post("/config/v1/apps/shop/envs", headers=headers, json={"name": "prod"})
    assert created.is_success, created.text
    written = await client.post(
        "/secrets/v1/secret/data/apps/db", headers=vault, json={"data": {"password": "s3cret"}}
    )
    assert written.is_success, written.text
    await reads_that_must_keep_working(client, admin)

    nested: Any = 1
    for _ in range(300):
        nested = [nested]
    refused = [
        ("PATCH", "/config/v1/apps/shop/envs/prod", {"headers": headers,
                                                     "json": {"set": {"deep": nested}}}),
        ("PATCH", "/config/v1/apps/shop/envs/prod", {"headers": headers,
                                                     "json": {"set": {"k": "\ud800"}}}),
        ("POST", "/secrets/v1/secret/data/apps/db", {"headers": vault,
                                                     "json": {"data": {"password": "\udfff"}}}),
        ("POST", "/secrets/v1/secret/data/apps/db", {
            "headers": {**vault, "content-type": "application/json"},
            "content": b'{"data": {"password": "\xed\xa0\x80"}}'}),
        ("POST", "/secrets/v1/secret/data/apps/deep", {
            "headers": vault, "content": b'{"data": ' + b"[" * 1200 + b"]" * 1200 + b"}"}),
        ("POST", "/secrets/v1/sys/mounts/deep", {
            "headers": vault, "content": b'{"type": "kv", "options": ' + b'{"a":' * 1200
            + b"1" + b"}" * 1200 + b"}"}),
    ]  # fmt: skip
    for method, path, options in refused:
        # httpx refuses to encode a lone surrogate; it is sent as raw escaped JSON instead.
        if "json" in options:
            import json

            options = {**options, "content": json.dumps(options.pop("json")).encode()}
        response = await client.request(method, path, **options)
        assert response.status_code == 400, (path, response.text[:300])
        await reads_that_must_keep_working(client, admin)


async def test_integers_beyond_what_a_column_holds_are_a_400(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    vault = {"X-Vault-Token": admin.api_key}
    headers = admin.headers
    await client.post("/config/v1/apps", headers=headers, json={"name": "shop"})
    await client.post("/config/v1/apps/shop/envs", headers=headers, json={"name": "prod"})
    await client.post("/secrets/v1/secret/data/apps/db", headers=vault, json={"data": {"a": "b"}})
    for huge in (2**31, 2**63, 10**30):
        for method, path, options in [
            ("GET", f"/config/v1/apps/shop/envs/prod/revisions/{huge}", {"headers": headers}),
            ("GET", f"/config/v1/apps/shop/envs/prod/diff?from={huge}", {"headers": headers}),
            ("POST", "/config/v1/apps/shop/envs/prod/rollback",
             {"headers": headers, "json": {"revision": huge}}),
            ("GET", f"/secrets/v1/secret/data/apps/db?version={huge}", {"headers": vault}),
            ("POST", "/secrets/v1/secret/destroy/apps/db",
             {"headers": vault, "json": {"versions": [huge]}}),
            ("POST", "/secrets/v1/secret/undelete/apps/db",
             {"headers": vault, "json": {"versions": [huge]}}),
        ]:  # fmt: skip
            response = await client.request(method, path, **options)
            assert response.status_code in (400, 422), (path, huge, response.text[:300])


async def test_a_flag_variation_without_an_id_is_a_validation_error(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    response = await client.post(
        "/flags/v1/flags",
        headers=admin.headers,
        json={"key": "kx1", "type": "boolean", "variations": [{}]},
    )
    assert response.status_code == 422, response.text
    assert (await client.get("/flags/v1/flags", headers=admin.headers)).status_code == 200
