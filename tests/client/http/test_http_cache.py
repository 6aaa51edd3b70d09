"""Opt-in RFC 9111 caching (hishel): revalidation with ETag and Last-Modified."""

from __future__ import annotations

from keel_client.http import BaseAPIClient, HTTPCache, SyncBaseAPIClient
from tests.client.http.faultserver import FaultServer


async def test_etag_is_revalidated_with_304(fault_server: FaultServer, key: str) -> None:
    async with BaseAPIClient(fault_server.url, cache=HTTPCache()) as api:
        first = await api.get(f"/etag/{key}")
        second = await api.get(f"/etag/{key}")
        third = await api.get(f"/etag/{key}")
    assert fault_server.cache_answers[key] == {200: 1, 304: 2}
    assert first.json() == second.json() == third.json() == {"version": 1}
    assert second.extensions["caching"]["from_cache"] is True
    assert second.extensions["caching"]["revalidated"] is True
    assert fault_server.seen[key][1]["if-none-match"] == '"v1"'


async def test_last_modified_is_revalidated_with_304(fault_server: FaultServer, key: str) -> None:
    async with BaseAPIClient(fault_server.url, cache=HTTPCache()) as api:
        for _ in range(3):
            assert (await api.get(f"/last-modified/{key}")).json() == {"version": 1}
    assert fault_server.cache_answers[key] == {200: 1, 304: 2}
    assert "if-modified-since" in fault_server.seen[key][2]


async def test_without_cache_every_call_is_a_full_200(fault_server: FaultServer, key: str) -> None:
    async with BaseAPIClient(fault_server.url) as api:
        for _ in range(3):
            await api.get(f"/etag/{key}")
    assert fault_server.cache_answers[key] == {200: 3}


def test_sync_client_revalidates_too(fault_server: FaultServer, key: str) -> None:
    with SyncBaseAPIClient(fault_server.url, cache=HTTPCache()) as api:
        bodies = [api.get(f"/etag/{key}").json() for _ in range(2)]
    assert bodies == [{"version": 1}] * 2
    assert fault_server.cache_answers[key] == {200: 1, 304: 1}
