"""Optimistic concurrency: ETags, ``If-Match`` (412/428) and ``If-None-Match`` (304)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Header, Response

from keel.app import create_app
from keel.core.errors import PreconditionFailed, PreconditionRequired
from keel.core.http import check_if_match, etag_for, is_not_modified
from keel.settings import Settings
from tests.support.asgi import serve


def test_etag_is_the_quoted_version() -> None:
    assert etag_for(7) == '"7"'
    assert etag_for("v7") == '"v7"'


class TestIfMatch:
    @pytest.mark.parametrize("header", ['"7"', '"6", "7"', '"6","7"', "*"])
    def test_matching_tag_lets_the_write_through(self, header: str) -> None:
        check_if_match(header, 7, required=True)

    def test_absent_header_is_accepted_when_not_required(self) -> None:
        check_if_match(None, 7, required=False)

    def test_absent_header_is_refused_when_required(self) -> None:
        with pytest.raises(PreconditionRequired):
            check_if_match(None, 7, required=True)

    def test_stale_tag_is_refused_with_the_current_etag(self) -> None:
        with pytest.raises(PreconditionFailed) as raised:
            check_if_match('"6"', 7, required=True)
        assert raised.value.extensions == {"current_etag": '"7"'}

    @pytest.mark.parametrize("header", ['W/"7"', "7", '"07"', '""'])
    def test_weak_or_malformed_tag_does_not_match(self, header: str) -> None:
        # If-Match uses the strong comparison (RFC 9110 13.1.1).
        with pytest.raises(PreconditionFailed):
            check_if_match(header, 7, required=False)


class TestIfNoneMatch:
    @pytest.mark.parametrize("header", ['"7"', 'W/"7"', '"1", W/"7"', "*"])
    def test_current_tag_means_not_modified(self, header: str) -> None:
        assert is_not_modified(header, 7)

    @pytest.mark.parametrize("header", [None, '"6"', '"6", W/"8"'])
    def test_other_or_absent_tag_means_modified(self, header: str | None) -> None:
        assert not is_not_modified(header, 7)


CURRENT_VERSION = 3
router = APIRouter()


@router.get("/doc", response_model=None)
async def read_doc(
    response: Response, if_none_match: Annotated[str | None, Header()] = None
) -> Response | dict[str, int]:
    if is_not_modified(if_none_match, CURRENT_VERSION):
        return Response(status_code=304, headers={"ETag": etag_for(CURRENT_VERSION)})
    response.headers["ETag"] = etag_for(CURRENT_VERSION)
    return {"version": CURRENT_VERSION}


@router.put("/doc")
async def write_doc(if_match: Annotated[str | None, Header()] = None) -> dict[str, int]:
    check_if_match(if_match, CURRENT_VERSION, required=True)
    return {"version": CURRENT_VERSION + 1}


@pytest.fixture
async def client(sqlite_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app: FastAPI = create_app(sqlite_settings)
    app.include_router(router)
    async with serve(app) as http:
        yield http


class TestOverHttp:
    async def test_read_then_conditional_write_succeeds(self, client: httpx.AsyncClient) -> None:
        etag = (await client.get("/doc")).headers["etag"]
        response = await client.put("/doc", headers={"If-Match": etag})
        assert response.status_code == 200

    async def test_write_with_a_stale_etag_is_a_412_problem(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.put("/doc", headers={"If-Match": etag_for(CURRENT_VERSION - 1)})
        assert response.status_code == 412
        assert response.json()["type"] == "urn:keel:problem:precondition-failed"
        assert response.json()["current_etag"] == etag_for(CURRENT_VERSION)

    async def test_write_without_if_match_is_a_428_problem(self, client: httpx.AsyncClient) -> None:
        response = await client.put("/doc")
        assert response.status_code == 428
        assert response.json()["type"] == "urn:keel:problem:precondition-required"

    async def test_revalidation_with_the_current_etag_is_a_304(
        self, client: httpx.AsyncClient
    ) -> None:
        etag = (await client.get("/doc")).headers["etag"]
        response = await client.get("/doc", headers={"If-None-Match": etag})
        assert response.status_code == 304
        assert response.content == b""
