"""``keel serve`` and what a request's head can claim: the client's address (``X-Forwarded-For``
is believed only from the proxies of ``KEEL_FORWARDED_ALLOW_IPS``) and its size
(``KEEL_MAX_HEADER_BYTES``, past which the answer is 431). A real subprocess each, as
an operator runs it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from keel.core.errors import PROBLEM_CONTENT_TYPE
from tests.support.keel_process import KeelServer, keel_env, keel_server

#: Small, so that a handful of attempts is over it even if a minute boundary falls between.
LOGIN_LIMIT = 2
ATTEMPTS = 3 * LOGIN_LIMIT
#: A JWT access token as large as a generous set of claims makes it.
JWT_SIZED = "eyJ" + "a" * 8_000


@pytest.fixture(scope="module")
def direct_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeelServer]:
    """No proxy configured: the default."""
    env = keel_env(KEEL_AUTH__LOGIN_RATE_PER_IP_PER_MINUTE=str(LOGIN_LIMIT))
    with keel_server(tmp_path_factory.mktemp("direct"), env) as server:
        yield server


@pytest.fixture(scope="module")
def proxied_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeelServer]:
    """Behind a proxy on 127.0.0.1, with a smaller head limit."""
    env = keel_env(
        KEEL_AUTH__LOGIN_RATE_PER_IP_PER_MINUTE=str(LOGIN_LIMIT),
        KEEL_FORWARDED_ALLOW_IPS="127.0.0.1",
        KEEL_MAX_HEADER_BYTES="8192",
    )
    with keel_server(tmp_path_factory.mktemp("proxied"), env) as server:
        yield server


def failed_logins(server: KeelServer, forwarded_for: list[str]) -> list[int]:
    """The status of one failing login per ``X-Forwarded-For`` value, in order."""
    statuses = []
    with server.client() as http:
        for address in forwarded_for:
            response = http.post(
                "/auth/v1/login",
                json={"tenant": "default", "username": "nobody", "password": "wrong-password"},
                headers={"X-Forwarded-For": address},
            )
            statuses.append(response.status_code)
    return statuses


def assert_headers_too_large(response: httpx.Response) -> None:
    assert response.status_code == 431, response.text
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    body = response.json()
    assert body["type"] == "urn:keel:problem:headers-too-large"
    assert body["status"] == 431
    assert body["request_id"] == response.headers["x-request-id"]
    assert response.headers["connection"] == "close"


def test_a_local_client_cannot_buy_fresh_login_attempts_with_x_forwarded_for(
    direct_server: KeelServer,
) -> None:
    statuses = failed_logins(direct_server, [f"203.0.113.{n}" for n in range(ATTEMPTS)])

    assert set(statuses) <= {401, 429}
    # At most two windows of LOGIN_LIMIT pass: the rest are over the one address's limit.
    assert statuses.count(429) >= ATTEMPTS - 2 * LOGIN_LIMIT


def test_x_forwarded_for_is_the_client_when_the_peer_is_a_named_proxy(
    proxied_server: KeelServer,
) -> None:
    distinct = failed_logins(proxied_server, [f"203.0.113.{n}" for n in range(ATTEMPTS)])
    assert distinct == [401] * ATTEMPTS  # each address has a budget of its own

    same = failed_logins(proxied_server, ["198.51.100.7"] * ATTEMPTS)
    assert same.count(429) >= ATTEMPTS - 2 * LOGIN_LIMIT

    # Text that is not an address shares one budget rather than buying a new one each time.
    garbage = failed_logins(proxied_server, [f"not-an-address-{n}" for n in range(ATTEMPTS)])
    assert garbage.count(429) >= ATTEMPTS - 2 * LOGIN_LIMIT
    assert "Traceback" not in proxied_server.stderr()


def test_a_megabyte_of_headers_is_refused_with_431_problem_json(
    direct_server: KeelServer,
) -> None:
    with direct_server.client() as http:
        one_huge = http.get(
            "/health/ready", headers={"X-Padding": "a" * 1_048_576, "X-Request-ID": "huge-1"}
        )
        assert_headers_too_large(one_huge)

        many = http.get("/health/ready", headers={f"X-Pad-{n}": "b" * 1024 for n in range(40)})
        assert_headers_too_large(many)

        long_target = http.get("/health/ready", params={"q": "c" * 40_000})
        assert_headers_too_large(long_target)

        # A JWT-sized bearer token and everyday headers pass, on a new connection.
        ordinary = http.get(
            "/auth/v1/me",
            headers={"Authorization": f"Bearer {JWT_SIZED}", "X-Request-ID": "ordinary"},
        )
        assert ordinary.status_code == 401
        assert ordinary.headers["x-request-id"] == "ordinary"
    assert "Traceback" not in direct_server.stderr()


def test_a_request_id_sent_before_the_limit_is_echoed_by_the_431(
    direct_server: KeelServer,
) -> None:
    with direct_server.client() as http:
        response = http.get(
            "/health/ready",
            headers={"X-Request-ID": "too-large-1", "X-Padding": "d" * 40_000},
        )
    assert_headers_too_large(response)
    assert response.headers["x-request-id"] == "too-large-1"


def test_the_head_limit_is_set_by_keel_max_header_bytes(proxied_server: KeelServer) -> None:
    with proxied_server.client() as http:
        assert_headers_too_large(http.get("/health/ready", headers={"X-Padding": "e" * 9_000}))
        assert http.get("/health/ready", headers={"X-Padding": "e" * 6_000}).status_code == 200


def test_the_head_limit_counts_what_a_client_controls(tmp_path: Path) -> None:
    """Exactly at the limit passes, one byte over does not (the target and every name and
    value; separators and line ends do not count)."""
    env = keel_env(KEEL_MAX_HEADER_BYTES="4096")
    with keel_server(tmp_path, env) as server, server.client() as http:
        request = http.build_request("GET", "/health/live")
        used = len(b"/health/live") + sum(len(k) + len(v) for k, v in request.headers.raw)
        padding_name = b"x-padding"
        at_limit = "f" * (4096 - used - len(padding_name))
        assert http.get("/health/live", headers={"X-Padding": at_limit}).status_code == 200
        assert_headers_too_large(http.get("/health/live", headers={"X-Padding": at_limit + "f"}))
