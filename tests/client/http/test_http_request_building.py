"""How a call's request is built: its URL merged with the base URL (each distinct path parsed
once, then reused) and the cookie jar (read only when a response sets a cookie)."""

from __future__ import annotations

import httpx
import pytest

from keel_client.http import BaseAPIClient, SyncBaseAPIClient


def recording_transport(
    seen: list[httpx.Request], *, set_cookie: str | None = None
) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        headers = {"Set-Cookie": set_cookie} if set_cookie is not None and len(seen) == 1 else {}
        return httpx.Response(200, json={"ok": True}, headers=headers)

    return httpx.MockTransport(answer)


@pytest.mark.parametrize(
    ("base_url", "url", "expected"),
    [
        ("http://api.test", "/items", "http://api.test/items"),
        ("http://api.test/v2", "/items", "http://api.test/v2/items"),
        ("http://api.test/v2/", "items", "http://api.test/v2/items"),
        ("http://api.test/v2", "/items?page=2", "http://api.test/v2/items?page=2"),
        ("http://api.test/v2", "http://other.test/x", "http://other.test/x"),
    ],
)
async def test_paths_merge_with_the_base_url_on_every_call(
    base_url: str, url: str, expected: str
) -> None:
    seen: list[httpx.Request] = []
    async with BaseAPIClient(base_url, transport=recording_transport(seen)) as api:
        await api.get(url)
        await api.get(url)
    assert [str(request.url) for request in seen] == [expected, expected]


async def test_params_replace_the_query_of_a_reused_url_for_their_call_only() -> None:
    seen: list[httpx.Request] = []
    async with BaseAPIClient("http://api.test", transport=recording_transport(seen)) as api:
        await api.get("/items?a=1", params={"b": "2"})
        await api.get("/items?a=1")
    assert [str(request.url) for request in seen] == [
        "http://api.test/items?b=2",  # httpx's rule: params replace the URL's query
        "http://api.test/items?a=1",
    ]


async def test_many_distinct_paths_each_reach_their_own_url() -> None:
    seen: list[httpx.Request] = []
    async with BaseAPIClient("http://api.test/v1", transport=recording_transport(seen)) as api:
        for number in range(600):
            await api.get(f"/jobs/{number}")
        await api.get("/jobs/7")
    assert [request.url.path for request in seen] == [
        *(f"/v1/jobs/{number}" for number in range(600)),
        "/v1/jobs/7",
    ]


async def test_a_cookie_the_api_sets_is_sent_back() -> None:
    seen: list[httpx.Request] = []
    transport = recording_transport(seen, set_cookie="session=abc; Path=/")
    async with BaseAPIClient("http://api.test", transport=transport) as api:
        await api.get("/login")
        await api.get("/items")
        await api.get("/items")
    assert "cookie" not in seen[0].headers
    assert [request.headers.get("cookie") for request in seen[1:]] == ["session=abc"] * 2


def test_the_sync_face_keeps_cookies_and_merges_paths_alike() -> None:
    seen: list[httpx.Request] = []
    transport = recording_transport(seen, set_cookie="session=abc; Path=/")
    with SyncBaseAPIClient("http://api.test/v2", transport=transport) as api:
        api.get("/login")
        api.get("/items")
    assert [str(request.url) for request in seen] == [
        "http://api.test/v2/login",
        "http://api.test/v2/items",
    ]
    assert seen[1].headers.get("cookie") == "session=abc"


async def test_cookies_set_on_the_client_are_sent() -> None:
    seen: list[httpx.Request] = []
    async with BaseAPIClient("http://api.test", transport=recording_transport(seen)) as api:
        api._http.cookies = {"tenant": "acme"}
        await api.get("/items")
    assert seen[0].headers.get("cookie") == "tenant=acme"
