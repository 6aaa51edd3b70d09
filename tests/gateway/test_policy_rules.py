"""The upstream address rule and the gateway's settings: blocked networks in every spelling,
loopback refused when the settings say so (by literal, by name, and by what a name resolves
to), names that do not resolve accepted with a warning; and a gateway run alone
(``--services gateway``) authenticating its admin API's callers."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from keel.core.errors import ValidationFailed
from keel.gateway.service import UpstreamAddressRules, check_policy
from keel.settings import GatewaySettings, Settings, SettingsError, load_settings
from tests.support.apps import running
from tests.support.tenants import make_tenant_admin

API = "/gateway/v1"


def one_pool(*urls: str) -> dict[str, Any]:
    return {"upstreams": [{"name": "pool", "targets": [{"url": url} for url in urls]}]}


def resolver_of(answers: dict[str, list[str]]) -> Any:
    """A resolver answering from ``answers`` (no network); other names fail as unknown."""

    def resolve(host: str, port: int) -> Sequence[str]:
        if host not in answers:
            raise OSError(f"unknown host {host}")
        return answers[host]

    return resolve


async def refused_locations(document: dict[str, Any], rules: UpstreamAddressRules) -> list[str]:
    with pytest.raises(ValidationFailed) as refused:
        await check_policy(document, rules)
    return [".".join(error["location"]) for error in refused.value.extensions["errors"]]


async def test_loopback_is_allowed_by_default_and_refused_when_the_settings_say_so() -> None:
    urls = ["http://127.0.0.1:8080", "http://127.1", "http://[::1]:80", "http://0x7f000001"]
    allowed = UpstreamAddressRules.from_settings(GatewaySettings())
    checked = await check_policy(one_pool(*urls), allowed)
    assert len(checked.policy.upstreams[0].targets) == 4

    strict = UpstreamAddressRules.from_settings(GatewaySettings(allow_loopback_upstreams=False))
    locations = await refused_locations(one_pool(*urls), strict)
    assert locations == [f"upstreams.0.targets.{index}.url" for index in range(4)]


async def test_localhost_is_refused_by_name_when_loopback_is_not_allowed() -> None:
    strict = UpstreamAddressRules.from_settings(GatewaySettings(allow_loopback_upstreams=False))
    locations = await refused_locations(
        one_pool("http://localhost:8080", "http://api.localhost"), strict
    )
    assert locations == ["upstreams.0.targets.0.url", "upstreams.0.targets.1.url"]


async def test_a_name_resolving_to_a_blocked_address_is_refused() -> None:
    resolver = resolver_of(
        {
            "imds.example.test": ["169.254.169.254"],
            "mixed.example.test": ["192.0.2.7", "::ffff:169.254.169.254"],
            "api.example.test": ["192.0.2.8"],
        }
    )
    rules = UpstreamAddressRules.from_settings(GatewaySettings(), resolver)
    document = one_pool(
        "http://imds.example.test", "https://mixed.example.test", "http://api.example.test:8080"
    )
    locations = await refused_locations(document, rules)
    assert locations == ["upstreams.0.targets.0.url", "upstreams.0.targets.1.url"]


async def test_a_name_that_does_not_resolve_is_accepted_with_a_warning() -> None:
    rules = UpstreamAddressRules.from_settings(GatewaySettings(), resolver_of({}))
    checked = await check_policy(one_pool("http://orders.internal.test:8080"), rules)
    assert [warning["code"] for warning in checked.warnings] == ["unresolved_host"]
    assert checked.warnings[0]["location"] == ["upstreams", "0", "targets", "0", "url"]


async def test_blocked_networks_come_from_the_settings() -> None:
    rules = UpstreamAddressRules.from_settings(
        GatewaySettings(blocked_upstream_networks=["10.99.0.0/16"])
    )
    locations = await refused_locations(one_pool("http://10.99.1.2", "http://10.98.1.2"), rules)
    assert locations == ["upstreams.0.targets.0.url"]
    # Link-local is no longer in the list: the operator's list replaces the default.
    await check_policy(one_pool("http://169.254.1.1"), rules)


def test_gateway_settings_are_read_from_the_environment_and_checked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KEEL_GATEWAY__TENANT", "edge")
    monkeypatch.setenv("KEEL_GATEWAY__PROXY_LISTEN", "0.0.0.0:8080")
    monkeypatch.setenv("KEEL_GATEWAY__BLOCKED_UPSTREAM_NETWORKS", "10.0.0.0/8, 192.0.2.7")
    monkeypatch.setenv("KEEL_GATEWAY__ALLOW_LOOPBACK_UPSTREAMS", "false")
    settings = load_settings(data_dir=tmp_path)
    assert settings.gateway.tenant == "edge"
    assert settings.gateway.proxy_listen == "0.0.0.0:8080"
    assert settings.gateway.blocked_upstream_networks == ["10.0.0.0/8", "192.0.2.7/32"]
    assert settings.gateway.allow_loopback_upstreams is False
    assert settings.gateway.cache_path(settings.data_dir) == tmp_path / "gateway-policy.json"

    monkeypatch.setenv("KEEL_GATEWAY__BLOCKED_UPSTREAM_NETWORKS", '["nope"]')
    with pytest.raises(SettingsError, match="KEEL_GATEWAY__BLOCKED_UPSTREAM_NETWORKS"):
        load_settings()
    monkeypatch.setenv("KEEL_GATEWAY__BLOCKED_UPSTREAM_NETWORKS", "10.0.0.0/8")
    monkeypatch.setenv("KEEL_GATEWAY__PROXY_LISTEN", "8080")
    with pytest.raises(SettingsError, match="KEEL_GATEWAY__PROXY_LISTEN"):
        load_settings()


def test_the_default_blocked_networks_cover_cloud_metadata() -> None:
    networks = [ipaddress.ip_network(cidr) for cidr in GatewaySettings().blocked_upstream_networks]
    for address in ("169.254.169.254", "100.100.100.200", "fd00:ec2::254", "fe80::1", "0.0.0.0"):
        assert any(ipaddress.ip_address(address) in network for network in networks), address


async def test_a_gateway_run_alone_authenticates_admin_callers(settings: Settings) -> None:
    alone = settings.model_copy(update={"services": ["gateway"]})
    async with running(alone) as (app, client):
        admin = await make_tenant_admin(app)
        answer = await client.get(f"{API}/policy", headers=admin.headers)
        assert answer.status_code == 200, answer.text
        assert answer.json()["revision"] == 0
        refused = await client.get(f"{API}/policy", headers={"Authorization": "Bearer nope"})
        assert refused.status_code == 401
        # Only the gateway's routes are mounted: auth's API is not served by this process.
        assert (await client.get("/auth/v1/users", headers=admin.headers)).status_code == 404


async def test_loopback_upstreams_refused_through_the_api_when_the_settings_say_so(
    settings: Settings,
) -> None:
    strict = settings.model_copy(
        update={"gateway": GatewaySettings(allow_loopback_upstreams=False)}
    )
    async with running(strict) as (app, client):
        admin = await make_tenant_admin(app)
        answer = await client.put(
            f"{API}/upstreams/local",
            headers=admin.headers,
            json={"targets": [{"url": "http://localhost:8080"}, {"url": "http://[::1]"}]},
        )
        assert answer.status_code == 422, answer.text
        locations = [error["location"] for error in answer.json()["errors"]]
        assert locations == [
            ["upstreams", "0", "targets", "0", "url"],
            ["upstreams", "0", "targets", "1", "url"],
        ]
