"""The gateway proxy end to end, as an operator runs it: ``keel serve`` with
``KEEL_GATEWAY__PROXY_LISTEN``, the tenant ``default``'s policy written with ``PUT
/gateway/v1/policy``, real upstreams on 127.0.0.1 — issue 20's done-when points.

- two gateway processes on one PostgreSQL database and one Redis share one limit of 100;
- a token bucket allows its burst, then its rate;
- the ``api`` profile's headers and a route's CORS answers, byte for byte;
- a client's forged ``Keel-Identity`` never reaches the upstream;
- a policy change reaches the running proxy in under a second (in-process broadcast, Redis);
- an upstream killed mid-run is ejected and traffic goes on to the survivor;
- a 1 GiB upload streams through with the gateway's memory growing by less than 50 MB;
- malformed credentials, dot segments and unknown paths answer problem+json, never a 500;
- with its database unreachable a gateway starts from its last known good copy.

Every test starts its own ``keel serve`` (about 5 s each); the file takes a minute or two.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from keel_client.edge._cors import Cors, CorsPolicy
from keel_client.edge._headers import HeaderRules, SecurityHeaders
from keel_client.edge._identity import IdentityVerifier
from keel_client.edge._model import EdgePolicy
from tests.gateway.e2e_support import (
    EchoLog,
    GatewayDeployment,
    answers,
    echo_app,
    policy,
    pool,
    route,
    seen_header,
    start_process,
    wait_until,
)
from tests.gateway.proxy.servers import serve
from tests.gateway.proxy.test_large_upload import (
    BLOCK,
    GIB,
    MAX_GROWTH,
    _body,
    _CountingUpstream,
    _PeakRss,
)
from tests.support.keel_process import free_port

ORIGIN = "https://app.example.com"
CORS = {
    "allow_origins": [ORIGIN],
    "allow_methods": ["GET", "POST"],
    "allow_headers": ["Authorization", "Content-Type"],
    "expose_headers": ["ETag"],
    "allow_credentials": True,
    "max_age_seconds": 300,
}


@pytest.fixture
def deployment(tmp_path: Path) -> GatewayDeployment:
    """An initialised Keel on the embedded SQLite database."""
    return GatewayDeployment.initialise(tmp_path)


async def _statuses(url: str, count: int) -> list[int]:
    """``count`` concurrent GETs of ``url``; their status codes."""
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        responses = await asyncio.gather(*(http.get(url) for _ in range(count)))
    return [response.status_code for response in responses]


async def _away_from_a_minute_boundary() -> None:
    """Wait while a 60 s window would end within 20 s, so one burst stays in one window."""
    into_minute = time.time() % 60
    if into_minute > 40:
        await asyncio.sleep(60 - into_minute + 0.5)


# -- 1. one limit shared by two gateways ---------------------------------------------------


@pytest.mark.postgres
@pytest.mark.redis
async def test_two_gateways_on_one_redis_share_one_limit_of_100(
    shared_deployment: GatewayDeployment, tmp_path: Path
) -> None:
    limits = {
        name: [
            {
                "name": "shared",
                "algorithm": name,
                "limit": 100,
                "period_seconds": 60,
                "key": "route",
            }
        ]
        for name in ("fixed_window", "sliding_window")
    }
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    async with serve(echo_app("echo")) as upstream:
        with (
            shared_deployment.serve(first_dir) as first,
            shared_deployment.serve(second_dir) as second,
        ):
            document = policy(
                [pool("echo", upstream)],
                route("ready", "/ready", "echo"),
                route("fixed", "/fixed", "echo", rate_limits=limits["fixed_window"]),
                route("sliding", "/sliding", "echo", rate_limits=limits["sliding_window"]),
            )
            await shared_deployment.put_policy(first, document)
            async with httpx.AsyncClient(timeout=5) as http:
                for gateway in (first, second):  # the second hears of it through Redis
                    await wait_until(lambda g=gateway: answers(http, f"{g.proxy_url}/ready"))
            for path in ("/fixed", "/sliding"):
                await _away_from_a_minute_boundary()
                one, other = await asyncio.gather(
                    _statuses(first.proxy_url + path, 150), _statuses(second.proxy_url + path, 150)
                )
                allowed = (one + other).count(200)
                assert set(one + other) <= {200, 429}, (path, sorted(set(one + other)))
                print(f"{path}: {allowed} allowed ({one.count(200)} + {other.count(200)})")
                assert 99 <= allowed <= 101, (path, allowed, one.count(200), other.count(200))
                # Both replicas took part: neither counted alone.
                assert min(one.count(200), other.count(200)) > 0, (path, one, other)


@pytest.mark.postgres
@pytest.mark.redis
async def test_two_gateways_share_one_limit_per_api_key(
    shared_deployment: GatewayDeployment, tmp_path: Path
) -> None:
    per_key = {
        "name": "per-key",
        "algorithm": "fixed_window",
        "limit": 10,
        "period_seconds": 60,
        "key": "api_key",
    }
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    async with serve(echo_app("echo")) as upstream:
        with (
            shared_deployment.serve(first_dir) as first,
            shared_deployment.serve(second_dir) as second,
        ):
            document = policy(
                [pool("echo", upstream)],
                route("ready", "/ready", "echo"),
                route("keyed", "/keyed", "echo", auth={"mode": "api_key"}, rate_limits=[per_key]),
            )
            await shared_deployment.put_policy(first, document)
            async with httpx.AsyncClient(timeout=5, headers=shared_deployment.headers) as http:
                for gateway in (first, second):
                    await wait_until(lambda g=gateway: answers(http, f"{g.proxy_url}/ready"))
                await _away_from_a_minute_boundary()
                statuses = [
                    (await http.get(f"{gateway.proxy_url}/keyed")).status_code
                    for _ in range(10)
                    for gateway in (first, second)
                ]
    # One API key, one counter, whichever replica the request reached.
    assert statuses == [200] * 10 + [429] * 10, statuses


# -- 2. a token bucket -----------------------------------------------------------------------


async def test_a_token_bucket_allows_its_burst_then_its_rate(
    deployment: GatewayDeployment,
) -> None:
    bucket = {
        "name": "bucket",
        "algorithm": "token_bucket",
        "limit": 1,
        "period_seconds": 1,
        "burst": 5,
        "key": "route",
    }
    async with serve(echo_app("echo")) as upstream:
        with deployment.serve() as gateway:
            document = policy(
                [pool("echo", upstream)],
                route("ready", "/ready", "echo"),
                route("bucket", "/bucket", "echo", rate_limits=[bucket]),
            )
            await deployment.put_policy(gateway, document)
            async with httpx.AsyncClient(base_url=gateway.proxy_url, timeout=5) as http:
                await wait_until(lambda: answers(http, "/ready"))
                burst = [(await http.get("/bucket")).status_code for _ in range(8)]
                assert burst == [200] * 5 + [429] * 3
                refused = await http.get("/bucket")
                assert refused.status_code == 429
                assert refused.headers["content-type"] == "application/problem+json"
                assert int(refused.headers["retry-after"]) >= 1
                # Then one a second: a token comes back each second, and only one.
                for _ in range(2):
                    await asyncio.sleep(1.1)
                    again = [(await http.get("/bucket")).status_code for _ in range(2)]
                    assert again == [200, 429]


# -- 3. security headers and CORS ------------------------------------------------------------


async def _through_cors_route(
    deployment: GatewayDeployment, requests: list[tuple[str, dict[str, str]]]
) -> list[httpx.Response]:
    """A gateway with route ``/api`` (the ``api`` profile, :data:`CORS`) in front of an echo
    upstream; the answers to ``(method, headers)`` requests of ``/api/orders``."""
    async with serve(echo_app("echo"), server_header=False) as upstream:
        with deployment.serve() as gateway:
            document = policy([pool("echo", upstream)], route("api", "/api", "echo", cors=CORS))
            await deployment.put_policy(gateway, document)
            async with httpx.AsyncClient(base_url=gateway.proxy_url, timeout=5) as http:
                await wait_until(lambda: answers(http, "/api"))
                return [
                    await http.request(method, "/api/orders", headers=headers)
                    for method, headers in requests
                ]


def _cors_fields(response: httpx.Response) -> list[tuple[bytes, bytes]]:
    """The response's ``Access-Control-*`` and ``Vary`` fields, in order, names lowercase."""
    return [
        (name.lower(), value)
        for name, value in response.headers.raw
        if name.lower().startswith(b"access-control-") or name.lower() == b"vary"
    ]


async def test_headers_and_cors_match_the_profile_byte_for_byte(
    deployment: GatewayDeployment,
) -> None:
    added = SecurityHeaders(HeaderRules()).added  # the `api` profile, HSTS on
    added_names = {name for name, _ in added}
    cors = Cors(CorsPolicy.model_validate(CORS))
    proxied, evil, evil_preflight = await _through_cors_route(
        deployment,
        [
            ("GET", {"Origin": ORIGIN}),
            ("GET", {"Origin": "https://evil.example"}),
            ("OPTIONS", {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}),
        ],
    )

    assert proxied.status_code == 200
    raw = [(name.lower(), value) for name, value in proxied.headers.raw]
    names = [name for name, _ in raw]
    # The profile's headers, exactly its values, each once, in the profile's order.
    assert [(n, v) for n, v in raw if n in added_names] == list(added)
    for leaked in (b"server", b"x-powered-by", b"x-xss-protection"):
        assert leaked not in names, raw
    # The route's CORS fields for an allowed origin: exactly what the engine computes.
    assert _cors_fields(proxied) == cors.response_headers(ORIGIN.encode())
    assert (b"access-control-allow-origin", ORIGIN.encode()) in raw

    assert evil.status_code == 200
    assert _cors_fields(evil) == [(b"vary", b"Origin")]
    assert evil_preflight.status_code == 403
    assert not any(name.startswith(b"access-control-") for name, _ in _cors_fields(evil_preflight))


async def test_a_cors_preflight_is_answered_with_the_exact_fields(
    deployment: GatewayDeployment,
) -> None:
    cors = Cors(CorsPolicy.model_validate(CORS))
    asked = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    (preflight,) = await _through_cors_route(deployment, [("OPTIONS", asked)])
    assert preflight.status_code == 204
    expected = cors.preflight([(k.lower().encode(), v.encode()) for k, v in asked.items()])[1]
    assert expected == [
        (b"access-control-allow-origin", ORIGIN.encode()),
        (b"access-control-allow-credentials", b"true"),
        (b"access-control-allow-methods", b"GET, POST"),
        (b"access-control-allow-headers", b"authorization, content-type"),
        (b"access-control-max-age", b"300"),
        (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
    ]
    assert _cors_fields(preflight) == expected, preflight.headers.raw


# -- 4. a forged identity --------------------------------------------------------------------


async def test_a_forged_identity_header_never_reaches_the_upstream(
    deployment: GatewayDeployment,
) -> None:
    forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9."
    log = EchoLog()
    async with serve(echo_app("echo", log)) as upstream:
        with deployment.serve() as gateway:
            document = policy(
                [pool("echo", upstream)],
                route("open", "/open", "echo"),
                route("signed", "/signed", "echo", auth={"mode": "api_key"}),
            )
            await deployment.put_policy(gateway, document)
            async with httpx.AsyncClient(base_url=gateway.proxy_url, timeout=5) as http:
                await wait_until(lambda: answers(http, "/open"))
                anonymous = await http.get("/open", headers={"Keel-Identity": forged})
                authenticated = await http.get(
                    "/signed", headers={"Keel-Identity": forged, **deployment.headers}
                )
            assert anonymous.status_code == 200, anonymous.text
            assert authenticated.status_code == 200, authenticated.text
            assert seen_header(anonymous.json(), "keel-identity") == []
            minted = seen_header(authenticated.json(), "keel-identity")
            assert forged not in minted
            assert all(forged not in str(request["headers"]) for request in log.requests)
            if minted:  # the gateway signs the caller it verified: it must verify upstream
                assert len(minted) == 1
                verifier = IdentityVerifier.from_url(
                    gateway.server.base_url, audience="gateway:echo"
                )
                principal = await verifier.verify(minted[0])
                assert principal.credential == "api_key"


# -- 5. a policy change reaches the running proxy ------------------------------------------


@pytest.fixture(params=["in-process", pytest.param("redis", marks=pytest.mark.redis)])
def broadcast_deployment(request: pytest.FixtureRequest, tmp_path: Path) -> GatewayDeployment:
    """An initialised Keel on SQLite whose changes are broadcast in-process, or through Redis."""
    variables = {}
    if request.param == "redis":
        variables["KEEL_REDIS_URL"] = str(request.getfixturevalue("redis_url"))
    return GatewayDeployment.initialise(tmp_path, **variables)


async def test_a_route_change_reaches_a_running_gateway_within_a_second(
    broadcast_deployment: GatewayDeployment,
) -> None:
    deployment = broadcast_deployment
    broadcast = "redis" if "KEEL_REDIS_URL" in deployment.env else "in-process"
    async with serve(echo_app("echo")) as upstream:
        with deployment.serve() as gateway:
            pools = [pool("echo", upstream)]
            await deployment.put_policy(gateway, policy(pools, route("old", "/old", "echo")))
            async with httpx.AsyncClient(base_url=gateway.proxy_url, timeout=5) as http:
                await wait_until(lambda: answers(http, "/old"))
                assert (await http.get("/new")).status_code == 404
                changed = policy(
                    pools,
                    route("old", "/old", "echo", auth={"mode": "jwt"}),
                    route("new", "/new", "echo"),
                )
                written_at = await deployment.put_policy(gateway, changed)
                await wait_until(
                    lambda: answers(http, "/new"),
                    timeout=5,
                    interval=0.005,
                    message="the new route never showed",
                )
                elapsed = time.monotonic() - written_at
                assert (await http.get("/old")).status_code == 401
    print(f"route change through {broadcast} broadcast: {elapsed * 1000:.0f} ms")
    assert elapsed < 1.0, f"{elapsed:.3f} s"


@pytest.mark.postgres
@pytest.mark.redis
async def test_a_route_change_reaches_another_replica_through_redis_within_a_second(
    shared_deployment: GatewayDeployment, tmp_path: Path
) -> None:
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    async with serve(echo_app("echo")) as upstream:
        with (
            shared_deployment.serve(first_dir) as writer,
            shared_deployment.serve(second_dir) as other,
        ):
            pools = [pool("echo", upstream)]
            await shared_deployment.put_policy(writer, policy(pools, route("old", "/old", "echo")))
            async with httpx.AsyncClient(base_url=other.proxy_url, timeout=5) as http:
                await wait_until(lambda: answers(http, "/old"))
                changed = policy(pools, route("new", "/new", "echo"))
                written_at = await shared_deployment.put_policy(writer, changed)
                await wait_until(lambda: answers(http, "/new"), timeout=5, interval=0.005)
                elapsed = time.monotonic() - written_at
                assert (await http.get("/old")).status_code == 404
    print(f"route change to another replica through Redis: {elapsed * 1000:.0f} ms")
    # Well under the follower's 2 s fallback read: the broadcast carried it.
    assert elapsed < 1.0, f"{elapsed:.3f} s"


# -- 6. an upstream killed mid-run ---------------------------------------------------------


async def test_a_killed_upstream_is_ejected_and_traffic_continues_to_the_survivor(
    deployment: GatewayDeployment,
) -> None:
    results: list[tuple[bool, int, str]] = []  # (after the kill?, status, upstream)
    killed = asyncio.Event()

    async def client_loop(http: httpx.AsyncClient, after_kill: int) -> None:
        """GETs one after another until ``after_kill`` were sent once the victim was gone."""
        while sum(1 for after, _, _ in results if after) < after_kill:
            after = killed.is_set()
            try:
                answer = await http.get("/pool")
            except httpx.HTTPError as error:
                results.append((after, 0, type(error).__name__))
                continue
            results.append((after, answer.status_code, _who_answered(answer)))

    async with contextlib.AsyncExitStack() as doomed, serve(echo_app("survivor")) as survivor:
        victim = await doomed.enter_async_context(serve(echo_app("victim")))
        with deployment.serve() as gateway:
            document = policy([pool("both", survivor, victim)], route("pool", "/pool", "both"))
            await deployment.put_policy(gateway, document)
            async with httpx.AsyncClient(base_url=gateway.proxy_url, timeout=10) as http:
                await wait_until(lambda: answers(http, "/pool"))
                loop = asyncio.create_task(client_loop(http, 100))
                await wait_until(lambda: _at_least(results, 40), interval=0.005)
                await doomed.aclose()  # the victim stops: its connections and listener close
                killed.set()
                await loop
                # Ejected, not merely retried around: a listener back on the victim's port
                # within the ejection time (10 s) is sent nothing.
                async with _ConnectionCounter(int(victim.rsplit(":", 1)[1])) as revived:
                    again = [_who_answered(await http.get("/pool")) for _ in range(20)]

    before = [upstream for after, _, upstream in results if not after]
    after = [(status, upstream) for was_after, status, upstream in results if was_after]
    assert {"survivor", "victim"} <= set(before), "round robin used both before the kill"
    assert len(after) == 100
    assert all(status == 200 for status, _ in after), after
    assert {upstream for _, upstream in after} == {"survivor"}
    assert all(status == 200 for _, status, _ in results), results
    assert again == ["survivor"] * 20
    assert revived.accepted == 0


class _ConnectionCounter:
    """A listener on ``port`` that counts the connections it accepts and closes them."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.accepted = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> _ConnectionCounter:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        writer.close()


def _who_answered(answer: httpx.Response) -> str:
    """The echo upstream's name, or the status and body of an answer from elsewhere."""
    if answer.status_code == 200:
        return str(answer.json()["upstream"])
    return f"{answer.status_code} {answer.text}"


async def _at_least(items: list[Any], count: int) -> bool:
    return len(items) >= count


# -- 7. a 1 GiB upload -----------------------------------------------------------------------


async def test_a_one_gib_upload_streams_through_keel_serve_with_flat_memory(
    deployment: GatewayDeployment,
) -> None:
    with _CountingUpstream() as upstream, deployment.serve() as gateway:
        upstream_url = f"http://127.0.0.1:{upstream.port}"
        document = policy(
            [pool("counter", upstream_url)],
            route(
                "upload", "/upload", "counter", max_body_bytes=2 * GIB, headers={"profile": "none"}
            ),
        )
        await deployment.put_policy(gateway, document)
        timeout = httpx.Timeout(120, connect=5)
        async with httpx.AsyncClient(base_url=gateway.proxy_url, timeout=timeout) as http:
            await wait_until(lambda: answers(http, "/upload", status=200))
            warm = await http.post("/upload", content=BLOCK * 4)
            assert warm.text == str(4 * len(BLOCK))
            baseline = psutil.Process(gateway.server.process.pid).memory_info().rss
            started = time.monotonic()
            with _PeakRss(gateway.server.process.pid) as rss:
                response = await http.post(
                    "/upload", content=_body(GIB), headers={"content-length": str(GIB)}
                )
            duration = time.monotonic() - started
    growth = rss.peak - baseline
    print(f"1 GiB through keel serve: {duration:.1f} s, RSS grew {growth / 2**20:.1f} MiB")
    assert response.status_code == 200, response.text
    assert response.text == str(GIB)
    assert growth < MAX_GROWTH, f"grew {growth / 2**20:.1f} MiB"


# -- 8. bad input ----------------------------------------------------------------------------


async def _raw_request(proxy_url: str, head: bytes) -> tuple[int, bytes]:
    """Send ``head`` (a request without a body) as it is; the status and the whole answer."""
    host, port = proxy_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()
    status_line = answer.split(b"\r\n", 1)[0]
    return int(status_line.split()[1]), answer


async def test_bad_input_answers_problem_json_never_a_500(deployment: GatewayDeployment) -> None:
    async with serve(echo_app("echo")) as upstream:
        with deployment.serve() as gateway:
            document = policy(
                [pool("echo", upstream)],
                route("open", "/open", "echo"),
                route("private", "/private", "echo", auth={"mode": "jwt_or_api_key"}),
            )
            await deployment.put_policy(gateway, document)
            async with httpx.AsyncClient(base_url=gateway.proxy_url, timeout=5) as http:
                await wait_until(lambda: answers(http, "/open"))
                malformed = [
                    "Bearer",
                    "Basic dXNlcjpwYXNz",
                    "Bearer not.a.jwt",
                    "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
                    "Bearer keel_" + "x" * 4000,
                    "Bearer a b c",
                ]
                for value in malformed:
                    refused = await http.get("/private/x", headers={"Authorization": value})
                    assert refused.status_code == 401, (value, refused.text)
                    assert refused.headers["content-type"] == "application/problem+json"
                    assert refused.json()["status"] == 401
                unknown = await http.get("/nothing-here")
                assert unknown.status_code == 404
                assert unknown.headers["content-type"] == "application/problem+json"
                assert unknown.json()["status"] == 404
            dot_segments = [b"/open/../private", b"/open/./x", b"/open/%2e%2e/private", b"/open//x"]
            for path in dot_segments[:3]:
                status, answer = await _raw_request(
                    gateway.proxy_url, b"GET " + path + b" HTTP/1.1\r\nHost: gw\r\n\r\n"
                )
                assert status == 400, (path, answer)
                assert b"application/problem+json" in answer.lower()
            # Credentials httpx will not send: trailing space, bytes beyond ASCII.
            for credential in (b"Bearer ", b"Bearer \xff\xfe", b"Bearer\tkeel_x"):
                status, answer = await _raw_request(
                    gateway.proxy_url,
                    b"GET /private HTTP/1.1\r\nHost: gw\r\nAuthorization: "
                    + credential
                    + b"\r\n\r\n",
                )
                assert status == 401, (credential, answer)
                assert b"application/problem+json" in answer.lower()
            # Whatever else arrives, the proxy never answers with a server error.
            odd = [
                b"GET /open/%zz HTTP/1.1\r\nHost: gw\r\n\r\n",
                b"GET /open/%00 HTTP/1.1\r\nHost: gw\r\n\r\n",
                b"GET /open/" + b"a" * 6000 + b" HTTP/1.1\r\nHost: gw\r\n\r\n",
                b"BREW /open HTTP/1.1\r\nHost: gw\r\n\r\n",
                b"GET /open HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: not-an-ip, ::::\r\n\r\n",
                b"GET /open//x HTTP/1.1\r\nHost: gw\r\n\r\n",
                b"GET /open HTTP/1.1\r\nHost: \r\n\r\n",
                b"GET /open HTTP/1.1\r\nHost: gw\r\nOrigin: \xff\r\n\r\n",
                b"GET /open HTTP/1.1\r\nHost: gw\r\nX-Request-ID: \xff/../x\r\n\r\n",
                b"POST /open HTTP/1.1\r\nHost: gw\r\nContent-Length: -1\r\n\r\n",
                b"POST /open HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            ]
            for head in odd:
                status, answer = await _raw_request(gateway.proxy_url, head)
                assert status < 500, (head[:80], answer[:300])
            assert gateway.server.process.poll() is None


# -- 9. the last known good copy -----------------------------------------------------------


async def _write_and_serve_kept_route(
    deployment: GatewayDeployment, upstream: str
) -> dict[str, Any]:
    """Start a gateway, write a policy with route ``/kept``, wait for the proxy to serve it,
    stop the gateway; the policy as the admin API read it back."""
    with deployment.serve() as gateway:
        document = policy([pool("echo", upstream)], route("kept", "/kept", "echo"))
        await deployment.put_policy(gateway, document)
        async with httpx.AsyncClient(timeout=5) as http:
            await wait_until(lambda: answers(http, f"{gateway.proxy_url}/kept"))
            read = await http.get(
                f"{gateway.server.base_url}/gateway/v1/policy", headers=deployment.headers
            )
    assert read.status_code == 200, read.text
    return dict(read.json())


async def test_the_last_known_good_copy_holds_the_served_policy(
    deployment: GatewayDeployment, tmp_path: Path
) -> None:
    async with serve(echo_app("echo")) as upstream:
        served = await _write_and_serve_kept_route(deployment, upstream)
    copy = json.loads((tmp_path / ".keel" / "gateway-policy.json").read_text())
    assert copy["tenant"] == "default"
    assert copy["revision"] == served["revision"] == 1
    assert copy["policy"] == served["policy"]
    assert EdgePolicy.model_validate(copy["policy"]).routes[0].name == "kept"


async def test_the_gateway_starts_from_its_last_known_good_copy_without_a_database(
    deployment: GatewayDeployment, tmp_path: Path
) -> None:
    async with serve(echo_app("echo")) as upstream:
        await _write_and_serve_kept_route(deployment, upstream)
        proxy_port = free_port()
        away = {
            **deployment.env,
            "KEEL_DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:1/keel",
            "KEEL_GATEWAY__PROXY_LISTEN": f"127.0.0.1:{proxy_port}",
        }
        command = ("serve", "--services", "gateway", "--port", str(free_port()))
        with start_process(*command, cwd=tmp_path, env=away) as (process, log_path):

            async def serving() -> bool:
                if process.poll() is not None:
                    raise AssertionError(f"keel serve exited:\n{log_path.read_text()}")
                async with httpx.AsyncClient(timeout=2) as http:
                    return await answers(http, f"http://127.0.0.1:{proxy_port}/kept")

            await wait_until(serving, timeout=30, interval=0.1)
            async with httpx.AsyncClient(timeout=5) as http:
                kept = await http.get(f"http://127.0.0.1:{proxy_port}/kept")
                unknown = await http.get(f"http://127.0.0.1:{proxy_port}/other")
    assert kept.json()["upstream"] == "echo"
    assert unknown.status_code == 404
    assert "gateway.policy.local_copy" in log_path.read_text()
