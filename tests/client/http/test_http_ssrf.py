"""The SSRF-safe transport: every spelling of an internal address, redirects, DNS rebinding."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Sequence
from urllib.parse import quote

import httpx
import pytest

from keel_client.http import (
    BaseAPIClient,
    KeelHTTPError,
    RetryPolicy,
    SSRFBlockedError,
    SSRFPolicy,
    SSRFSafeTransport,
    SyncBaseAPIClient,
    TransportError,
    blocked_reason,
    parse_ip_literal,
)
from keel_client.http._ssrf import redirect_request
from tests.client.http.faultserver import FaultServer

FAKE_DNS = {
    "internal.example": ["10.1.2.3"],
    "dual.example": ["93.184.216.34", "127.0.0.1"],
    "mapped.example": ["::ffff:127.0.0.1"],
    "metadata.example": ["169.254.169.254"],
    "loopback.example": ["127.0.0.1"],
}


def fake_resolver(host: str, port: int) -> Sequence[str]:
    try:
        return FAKE_DNS[host]
    except KeyError:
        raise OSError(f"no such host {host}") from None


# {port} is the fault server's: had the check failed, these would reach a live server.
BLOCKED_URLS = [
    "http://127.0.0.1:{port}/ok",
    "http://127.1:{port}/ok",
    "http://2130706433:{port}/ok",
    "http://0x7f000001:{port}/ok",
    "http://0x7f.1:{port}/ok",
    "http://0x7f.0.0.1:{port}/ok",
    "http://0177.0.0.1:{port}/ok",
    "http://0177.1:{port}/ok",
    "http://017700000001:{port}/ok",
    "http://127.000.000.001:{port}/ok",
    "http://127.0.0.1.:{port}/ok",
    "http://127.255.255.254:{port}/ok",
    "http://%31%32%37.0.0.1:{port}/ok",
    "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11:{port}/ok",
    "http://127\u30020\u30020\u30021:{port}/ok",
    "http://user:pass@127.0.0.1:{port}/ok",
    "http://[::1]:{port}/ok",
    "http://[0:0:0:0:0:0:0:1]:{port}/ok",
    "http://[::ffff:127.0.0.1]:{port}/ok",
    "http://[::ffff:7f00:1]:{port}/ok",
    "http://[0:0:0:0:0:ffff:127.0.0.1]:{port}/ok",
    "http://[::127.0.0.1]:{port}/ok",
    "http://[64:ff9b::127.0.0.1]:{port}/ok",
    "http://[64:ff9b::7f00:1]:{port}/ok",
    "http://[2002:7f00:1::]:{port}/ok",
    "http://localhost:{port}/ok",
    "http://LOCALHOST.:{port}/ok",
    "http://api.localhost:{port}/ok",
    "http://0:{port}/ok",
    "http://0.0.0.0:{port}/ok",
    "http://[::]:{port}/ok",
    "http://loopback.example:{port}/ok",
    "http://mapped.example:{port}/ok",
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://0xa9fea9fe/",
    "http://2852039166/",
    "http://0251.0376.0251.0376/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://[fd00:ec2::254]/",
    "http://100.100.100.200/",
    "http://168.63.129.16/",
    "http://192.0.0.192/",
    "http://metadata.google.internal/",
    "http://[fe80::1%25eth0]/",
    "http://[fc00::1]/",
    "http://224.0.0.1/",
    "http://[ff02::1]/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    "http://198.18.0.1/",
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
    "http://[2001:db8::1]/",
    "http://internal.example/",
    "http://dual.example/",
    "http://metadata.example/",
    "ftp://93.184.216.34/",
    "file:///etc/passwd",
]


@pytest.fixture
async def guarded(fault_server: FaultServer) -> BaseAPIClient:
    async with BaseAPIClient(
        ssrf=SSRFPolicy(resolver=fake_resolver), retry=RetryPolicy(max_retries=0)
    ) as api:
        yield api  # type: ignore[misc]


@pytest.fixture
async def local_only(fault_server: FaultServer) -> BaseAPIClient:
    """Loopback allowed explicitly, as a test must to reach its local server."""
    async with BaseAPIClient(
        fault_server.url,
        ssrf=SSRFPolicy(allow=("127.0.0.1",), resolver=fake_resolver, max_redirects=3),
        retry=RetryPolicy(max_retries=0),
    ) as api:
        yield api  # type: ignore[misc]


@pytest.mark.parametrize("template", BLOCKED_URLS)
async def test_internal_destinations_are_refused(
    guarded: BaseAPIClient, fault_server: FaultServer, template: str
) -> None:
    before = fault_server.hits["ok"]
    with pytest.raises(SSRFBlockedError) as caught:
        await guarded.get(template.format(port=fault_server.port))
    assert caught.value.reason
    assert fault_server.hits["ok"] == before


@pytest.mark.parametrize(
    ("spelling", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("0XA9.0xfe.43518", "169.254.169.254"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("fe80::1%25eth0", "fe80::1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("93.184.216.34", "93.184.216.34"),
    ],
)
def test_every_textual_form_is_read_like_inet_aton(spelling: str, address: str) -> None:
    assert parse_ip_literal(spelling) == ipaddress.ip_address(address)


@pytest.mark.parametrize("name", ["example.com", "08.1", "1.2.3.4.5", "256.1.1.1.", "1e3", "0x-1"])
def test_host_names_are_not_mistaken_for_addresses(name: str) -> None:
    assert parse_ip_literal(name) is None


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("100.64.1.1", "carrier-grade NAT"),
        ("169.254.169.254", "cloud metadata"),
        ("64:ff9b::a00:1", "NAT64 10.0.0.1: private"),
        ("2002:c0a8:101::", "6to4 192.168.1.1: private"),
        ("::ffff:10.0.0.1", "IPv4-mapped 10.0.0.1: private"),
        ("93.184.216.34", None),
        ("2606:4700::1111", None),
        ("::ffff:93.184.216.34", None),
        ("64:ff9b::5db8:d822", None),
    ],
)
def test_blocked_reason(address: str, reason: str | None) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) == reason


async def test_public_address_form_passes_the_policy() -> None:
    policy = SSRFPolicy(resolver=fake_resolver)
    policy.check_url("https://93.184.216.34/x")
    policy.check_url("https://[2606:4700::1111]/x")


class TestAllowAndDenyLists:
    async def test_loopback_is_reachable_only_when_allowed(
        self, local_only: BaseAPIClient, guarded: BaseAPIClient, fault_server: FaultServer
    ) -> None:
        assert (await local_only.get("/ok")).json() == {"ok": True}
        with pytest.raises(SSRFBlockedError):
            await guarded.get(f"{fault_server.url}/ok")

    async def test_odd_spelling_of_an_allowed_address_connects_to_that_address(
        self, local_only: BaseAPIClient, fault_server: FaultServer
    ) -> None:
        response = await local_only.get(f"http://2130706433:{fault_server.port}/echo")
        assert response.json()["headers"]["host"] == f"2130706433:{fault_server.port}"

    async def test_allowed_name_keeps_its_host_header(
        self, local_only: BaseAPIClient, fault_server: FaultServer
    ) -> None:
        response = await local_only.get(f"http://loopback.example:{fault_server.port}/echo")
        assert response.json()["headers"]["host"] == f"loopback.example:{fault_server.port}"

    def test_allowing_a_network_does_not_open_cloud_metadata(self) -> None:
        policy = SSRFPolicy(allow=("169.254.0.0/16", "0.0.0.0/0"))
        policy.check_url("http://169.254.1.1/")
        with pytest.raises(SSRFBlockedError, match="metadata"):
            policy.check_url("http://169.254.169.254/")
        SSRFPolicy(allow=("169.254.169.254",)).check_url("http://169.254.169.254/")

    def test_deny_list_and_hook(self) -> None:
        policy = SSRFPolicy(
            deny=("*.corp.example", "93.184.216.0/24"),
            hook=lambda host, address: False if host == "evil.example" else None,
        )
        with pytest.raises(SSRFBlockedError, match="deny list"):
            policy.check_url("http://wiki.corp.example/")
        with pytest.raises(SSRFBlockedError, match="deny list"):
            policy.check_url("http://93.184.216.34/")
        with pytest.raises(SSRFBlockedError, match="hook"):
            policy.check_address("evil.example", ipaddress.ip_address("8.8.8.8"))
        policy.check_address("good.example", ipaddress.ip_address("8.8.8.8"))

    def test_ports_can_be_restricted(self) -> None:
        policy = SSRFPolicy(allowed_ports=frozenset({443}))
        policy.check_url("https://93.184.216.34/")
        with pytest.raises(SSRFBlockedError, match="port"):
            policy.check_url("http://93.184.216.34:8080/")


class TestRedirects:
    async def test_redirect_to_an_allowed_destination_is_followed(
        self, local_only: BaseAPIClient, fault_server: FaultServer
    ) -> None:
        target = quote(f"{fault_server.url}/ok", safe="")
        response = await local_only.get(f"/redirect?to={target}")
        assert response.json() == {"ok": True}

    @pytest.mark.parametrize(
        "target",
        [
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]:{port}/ok",
            "http://127.0.0.2:{port}/ok",
            "http://localhost:{port}/ok",
            "http://0x7f000002:{port}/ok",
            "http://internal.example/",
            "gopher://127.0.0.1:{port}/",
        ],
    )
    async def test_every_hop_is_checked_again(
        self, local_only: BaseAPIClient, fault_server: FaultServer, target: str
    ) -> None:
        before = fault_server.hits["ok"]
        location = quote(target.format(port=fault_server.port), safe="")
        with pytest.raises(SSRFBlockedError):
            await local_only.get(f"/redirect?to={location}")
        assert fault_server.hits["ok"] == before

    async def test_redirect_loops_stop_at_max_redirects(
        self, local_only: BaseAPIClient, fault_server: FaultServer
    ) -> None:
        before = fault_server.hits["loop"]
        with pytest.raises(TransportError, match="redirects"):
            await local_only.get("/loop")
        assert fault_server.hits["loop"] - before == 4

    def test_credentials_do_not_follow_a_cross_origin_redirect(self) -> None:
        request = httpx.Request(
            "POST", "https://a.example/x", headers={"Authorization": "Bearer t"}, json={"a": 1}
        )
        response = httpx.Response(303, headers={"Location": "https://b.example/y"})
        follow = redirect_request(request, response)
        assert follow is not None
        assert follow.method == "GET"
        assert "authorization" not in follow.headers
        assert follow.headers["host"] == "b.example"
        assert follow.content == b""
        same_origin = redirect_request(request, httpx.Response(307, headers={"Location": "/z"}))
        assert same_origin is not None
        assert same_origin.method == "POST"
        assert same_origin.headers["authorization"] == "Bearer t"


class TestDNSRebinding:
    async def test_connection_goes_to_the_checked_address_then_rebinding_is_refused(
        self, fault_server: FaultServer
    ) -> None:
        answers = iter([["127.0.0.1"], ["169.254.169.254"]])
        lookups: list[str] = []

        def rebinding_resolver(host: str, port: int) -> Sequence[str]:
            lookups.append(host)
            return next(answers)

        policy = SSRFPolicy(allow=("127.0.0.1",), resolver=rebinding_resolver)
        limits = httpx.Limits(max_keepalive_connections=0)  # a new connection per request
        async with BaseAPIClient(ssrf=policy, limits=limits) as api:
            response = await api.get(f"http://rebind.test:{fault_server.port}/echo")
            assert response.json()["headers"]["host"] == f"rebind.test:{fault_server.port}"
            assert lookups == ["rebind.test"]  # checked and connected with one answer
            with pytest.raises(SSRFBlockedError, match="metadata"):
                await api.get(f"http://rebind.test:{fault_server.port}/echo")
        assert lookups == ["rebind.test", "rebind.test"]

    async def test_public_answer_then_loopback_never_reaches_loopback(
        self, fault_server: FaultServer
    ) -> None:
        answers = iter([["93.184.216.34"], ["127.0.0.1"], ["127.0.0.1"]])
        lookups: list[str] = []

        def rebinding_resolver(host: str, port: int) -> Sequence[str]:
            lookups.append(host)
            return next(answers)

        before = fault_server.hits["echo"]
        async with BaseAPIClient(
            ssrf=SSRFPolicy(resolver=rebinding_resolver),
            retry=RetryPolicy(max_retries=0),
            timeout=httpx.Timeout(5.0, connect=0.3),
        ) as api:
            # The checked public address is what gets dialled (unreachable here, or a
            # stranger's server); a second lookup that would answer 127.0.0.1 never happens.
            with contextlib.suppress(KeelHTTPError):
                await api.get(f"http://rebind.test:{fault_server.port}/echo")
        assert lookups == ["rebind.test"]
        assert fault_server.hits["echo"] == before


async def test_transport_works_in_a_bare_httpx_client(fault_server: FaultServer) -> None:
    transport = SSRFSafeTransport(SSRFPolicy())
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(SSRFBlockedError):
            await http.get(f"http://0x7f.1:{fault_server.port}/ok")


def test_sync_client_is_guarded_too(fault_server: FaultServer) -> None:
    with SyncBaseAPIClient(ssrf=SSRFPolicy(resolver=fake_resolver)) as api:
        with pytest.raises(SSRFBlockedError):
            api.get(f"http://2130706433:{fault_server.port}/ok")
        with pytest.raises(SSRFBlockedError):
            api.get(f"http://loopback.example:{fault_server.port}/ok")
    with SyncBaseAPIClient(
        fault_server.url, ssrf=SSRFPolicy(allow=("127.0.0.1",), resolver=fake_resolver)
    ) as allowed:
        assert allowed.get("/ok").json() == {"ok": True}
