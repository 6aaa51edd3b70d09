"""The auth service's pure rules (keel.auth.service.policy), called directly."""

from __future__ import annotations

import pytest

from keel.auth.service.policy import (
    audience_claim,
    ensure_may_grant,
    granted_scope,
    is_self,
    names_audience,
    validated_permissions,
)
from keel.core.errors import Forbidden, ValidationFailed
from keel_client.auth import Principal


def _principal(*permissions: str) -> Principal:
    return Principal(
        subject="u1",
        tenant_id="t1",
        principal_type="user",
        roles=frozenset(),
        permissions=frozenset(permissions),
        credential="api_key",
        claims={},
    )


@pytest.mark.parametrize(
    ("held", "requested", "granted"),
    [
        (["orders:*"], "orders:order:read openid", "orders:order:read openid"),
        (["orders:order:read"], "orders:order:read billing:invoice:read", "orders:order:read"),
        (["orders:order:read"], "billing:invoice:read", None),
        ([], "openid profile", "openid profile"),
        ([], "", ""),
    ],
)
def test_granted_scope_keeps_what_is_held_and_refuses_when_nothing_is(
    held: list[str], requested: str, granted: str | None
) -> None:
    assert granted_scope(held, requested) == granted


def test_a_grantor_may_grant_only_what_it_holds() -> None:
    grantor = _principal("auth:user:read")
    ensure_may_grant(grantor, ["auth:user:read"])
    ensure_may_grant(None, ["*"])  # the platform itself
    with pytest.raises(Forbidden):
        ensure_may_grant(grantor, ["auth:user:read", "auth:user:update"])


def test_permissions_are_sorted_deduplicated_and_validated() -> None:
    assert validated_permissions(["b:c:d", "a:b:c", "b:c:d"]) == ["a:b:c", "b:c:d"]
    with pytest.raises(ValidationFailed):
        validated_permissions(["not a permission"])


def test_audiences_default_to_keels_own_and_a_list_when_several() -> None:
    assert audience_claim(None, "keel") == "keel"
    assert audience_claim("orders", "keel") == "orders"
    assert audience_claim("orders keel orders", "keel") == ["orders", "keel"]
    assert names_audience("keel", "keel")
    assert names_audience(["orders", "keel"], "keel")
    assert not names_audience(["orders"], "keel")
    assert not names_audience(None, "keel")


def test_is_self_compares_type_and_subject() -> None:
    assert is_self(_principal(), "user", "u1")
    assert not is_self(_principal(), "service_account", "u1")
