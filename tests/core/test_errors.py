"""RFC 9457 problem details: every Keel error type, FastAPI's own errors, nothing echoed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.exceptions import HTTPException

from keel.app import create_app
from keel.core.errors import (
    GENERIC_HTTP_ERROR_SLUG,
    PROBLEM_CONTENT_TYPE,
    PROBLEM_TYPES,
    KeelError,
    PreconditionFailed,
    RateLimited,
    Unauthorized,
    problem_type,
)
from keel.core.sqlite import hold_write_lock
from keel.settings import DatabasePoolSettings, Settings
from tests.support.asgi import serve
from tests.support.tenants import make_tenant_admin


def all_error_classes(base: type[KeelError] = KeelError) -> list[type[KeelError]]:
    """The classes of ``keel.core.errors``, one a problem type (others specialise them:
    ``keel.core.db.DatabaseUnavailable`` is a ``ServiceUnavailable``)."""
    found = []
    for cls in base.__subclasses__():
        if cls.__module__ == "keel.core.errors":
            found += [cls, *all_error_classes(cls)]
    return found


ERRORS_BY_SLUG = {cls.slug: cls for cls in all_error_classes()}
SECRET = "correct-horse-battery"

router = APIRouter()


class Signup(BaseModel):
    email: str
    password: str = Field(min_length=32)


@router.get("/raise/{slug}")
async def raise_error(slug: str) -> None:
    error_class = ERRORS_BY_SLUG[slug]
    if error_class is RateLimited:
        raise RateLimited("slow down", retry_after=30)
    raise error_class(f"detail of {slug}")


@router.get("/raise-http/{status}")
async def raise_starlette_http_error(status: int) -> None:
    raise HTTPException(status)


@router.get("/violate/{constraint}")
async def violate(constraint: str) -> None:
    """A real integrity violation of SQLite's: ``unique`` or ``not-null``."""
    engine = create_async_engine("sqlite+aiosqlite://")
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE t (name TEXT NOT NULL UNIQUE)"))
            await connection.execute(text("INSERT INTO t VALUES ('taken')"))
            value = "taken" if constraint == "unique" else None
            await connection.execute(text("INSERT INTO t VALUES (:v)"), {"v": value})
    finally:
        await engine.dispose()


@router.post("/signup")
async def signup(body: Signup) -> dict[str, str]:
    return {"email": body.email}


@router.get("/etag-conflict")
async def etag_conflict() -> None:
    raise PreconditionFailed("changed", current_etag='"8"', type="spoofed", status=200)


@pytest.fixture
async def client(sqlite_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app: FastAPI = create_app(sqlite_settings)
    app.include_router(router)
    async with serve(app) as http:
        yield http


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, object]:
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    body: dict[str, object] = response.json()
    assert body["type"] == problem_type(slug)
    assert body["status"] == status
    assert isinstance(body["title"], str)
    assert body["title"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def test_problem_types_list_every_error_class_and_the_generic_http_error() -> None:
    slugs = [*ERRORS_BY_SLUG, GENERIC_HTTP_ERROR_SLUG]
    assert sorted(problem_type(slug) for slug in slugs) == PROBLEM_TYPES


def test_problem_types_are_stable_urns() -> None:
    # Clients match on these strings: changing one is a breaking change of the API.
    assert PROBLEM_TYPES == [
        "urn:keel:problem:conflict",
        "urn:keel:problem:forbidden",
        "urn:keel:problem:headers-too-large",
        "urn:keel:problem:http-error",
        "urn:keel:problem:internal",
        "urn:keel:problem:malformed-body",
        "urn:keel:problem:method-not-allowed",
        "urn:keel:problem:not-found",
        "urn:keel:problem:payload-too-large",
        "urn:keel:problem:precondition-failed",
        "urn:keel:problem:precondition-required",
        "urn:keel:problem:rate-limited",
        "urn:keel:problem:unauthorized",
        "urn:keel:problem:unavailable",
        "urn:keel:problem:unsupported-media-type",
        "urn:keel:problem:validation",
    ]


@pytest.mark.parametrize("problem", PROBLEM_TYPES)
async def test_every_problem_type_is_rendered_as_problem_json(
    client: httpx.AsyncClient, problem: str
) -> None:
    slug = problem.removeprefix("urn:keel:problem:")
    if slug == GENERIC_HTTP_ERROR_SLUG:
        # No class of ours raises it: an HTTP error of a status we have no class for.
        response = await client.get("/raise-http/418", headers={"X-Request-ID": "id-http"})
        body = assert_problem(response, 418, slug)
        assert body["request_id"] == "id-http"
        return
    error_class = ERRORS_BY_SLUG[slug]
    response = await client.get(f"/raise/{slug}", headers={"X-Request-ID": f"id-{slug}"})
    body = assert_problem(response, error_class.status, slug)
    assert body["title"] == error_class.title
    assert body["instance"] == f"/raise/{slug}"
    assert body["request_id"] == f"id-{slug}"
    assert body["detail"] == ("slow down" if error_class is RateLimited else f"detail of {slug}")


async def test_unauthorized_asks_for_a_bearer_token(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/raise/{Unauthorized.slug}")
    assert response.headers["www-authenticate"] == "Bearer"


async def test_rate_limited_says_when_to_retry(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/raise/{RateLimited.slug}")
    assert response.headers["retry-after"] == "30"


async def test_extensions_are_added_but_cannot_override_standard_members(
    client: httpx.AsyncClient,
) -> None:
    body = assert_problem(await client.get("/etag-conflict"), 412, "precondition-failed")
    assert body["current_etag"] == '"8"'


async def test_unknown_path_is_not_found(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/no/such/thing"), 404, "not-found")
    assert body["instance"] == "/no/such/thing"


async def test_wrong_method_is_method_not_allowed_with_allow_header(
    client: httpx.AsyncClient,
) -> None:
    response = await client.delete("/signup")
    assert_problem(response, 405, "method-not-allowed")
    assert response.headers["allow"] == "POST"


async def test_starlette_http_errors_become_keel_problems(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/raise-http/403"), 403, "forbidden")
    assert_problem(await client.get("/raise-http/409"), 409, "conflict")


async def test_http_error_without_keel_class_is_problem_json_of_a_listed_type(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/raise-http/418")
    body = assert_problem(response, 418, GENERIC_HTTP_ERROR_SLUG)
    assert body["type"] in PROBLEM_TYPES


async def test_malformed_json_is_a_400_malformed_body(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/signup",
        content=b'{"email": "a@example.com", "password": "' + SECRET.encode(),
        headers={"Content-Type": "application/json"},
    )
    assert_problem(response, 400, "malformed-body")
    assert SECRET not in response.text


async def test_validation_error_names_the_field_without_echoing_its_value(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/signup", json={"email": "a@example.com", "password": SECRET})
    body = assert_problem(response, 422, "validation")
    assert SECRET not in response.text
    assert body["errors"] == [
        {
            "location": ["body", "password"],
            "message": "String should have at least 32 characters",
            "code": "string_too_short",
        }
    ]


async def test_validation_error_of_a_wrongly_typed_secret_does_not_echo_it(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/signup", json={"email": "a@example.com", "password": {"value": SECRET}}
    )
    assert_problem(response, 422, "validation")
    assert SECRET not in response.text


def test_keel_error_message_defaults_to_its_title() -> None:
    error = Unauthorized()
    assert str(error) == Unauthorized.title
    assert error.detail is None
    assert error.type == "urn:keel:problem:unauthorized"


TOKEN = "/auth/v1/oauth/token"
CLIENT_CREDENTIALS = {"grant_type": "client_credentials"}


async def test_a_request_that_finds_every_database_connection_busy_gets_a_503_to_retry(
    sqlite_settings: Settings,
) -> None:
    """A burst beyond the pool waits ``timeout_seconds``, then answers 503 with
    ``Retry-After``: the client may retry; it is not a fault (500) of the server."""
    settings = sqlite_settings.model_copy(
        update={"database_pool": DatabasePoolSettings(size=1, timeout_seconds=0.2)}
    )
    app: FastAPI = create_app(settings)
    async with serve(app) as http:
        database = app.state.keel.database
        async with database.session() as held:  # the pool's only connection, kept busy
            await held.execute(text("SELECT 1"))
            busy = await http.post(TOKEN, data=CLIENT_CREDENTIALS, auth=("kc_nobody", "s"))
        body = assert_problem(busy, 503, "unavailable")
        assert busy.headers["retry-after"] == "1"
        assert "Traceback" not in busy.text
        assert "connection" in str(body["detail"])
        # The connection back in the pool, the same request is answered normally.
        after = await http.post(TOKEN, data=CLIENT_CREDENTIALS, auth=("kc_nobody", "s"))
        assert after.status_code == 401  # invalid_client: the query ran


async def test_a_write_that_waits_out_sqlites_busy_timeout_gets_a_503_to_retry(
    sqlite_settings: Settings,
) -> None:
    """SQLite's writers take turns; one kept waiting past the busy timeout (here 1 s) by a
    burst of other writes answers 503 with ``Retry-After``, never a 500."""
    pool = DatabasePoolSettings(sqlite_busy_timeout_seconds=1)
    app: FastAPI = create_app(sqlite_settings.model_copy(update={"database_pool": pool}))
    async with serve(app) as http:
        admin = await make_tenant_admin(app)
        async with app.state.keel.database.session() as held:
            await hold_write_lock(held)  # another writer, holding on
            busy = await http.put(
                "/storage/v1/buckets/waiting", json={"scan": False}, headers=admin.headers
            )
        body = assert_problem(busy, 503, "unavailable")
        assert busy.headers["retry-after"] == "1"
        assert "busy" in str(body["detail"])
        after = await http.put(
            "/storage/v1/buckets/waiting", json={"scan": False}, headers=admin.headers
        )
        assert after.status_code == 201, after.text


async def test_a_unique_key_lost_to_a_concurrent_request_is_a_conflict_other_violations_500(
    client: httpx.AsyncClient,
) -> None:
    """Two requests creating one name at once: the loser may retry, so 409. A NOT NULL
    violation is a fault of Keel's and stays a bare 500."""
    assert_problem(await client.get("/violate/unique"), 409, "conflict")
    body = assert_problem(await client.get("/violate/not-null"), 500, "internal")
    assert "NOT NULL" not in str(body)


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
async def test_a_json_body_without_the_json_media_type_is_a_415_that_says_so(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    body = b'{"email": "a@example.com", "password": "' + SECRET.encode() * 2 + b'"}'
    headers = {"Content-Type": content_type} if content_type else {}
    response = await client.post("/signup", content=body, headers=headers)
    problem = assert_problem(response, 415, "unsupported-media-type")
    assert "Content-Type: application/json" in str(problem["detail"])
    assert SECRET not in response.text


async def test_a_json_body_of_the_wrong_shape_or_none_stays_a_422(
    client: httpx.AsyncClient,
) -> None:
    assert_problem(await client.post("/signup", json=["not", "an", "object"]), 422, "validation")
    assert_problem(await client.post("/signup"), 422, "validation")
