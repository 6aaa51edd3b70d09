"""The storage service when what it depends on fails, and what its errors may show.

- The blob store down (an S3 endpoint nobody listens on): an upload, a part and a download
  answer 503 with ``Retry-After`` (never a 500), and nothing becomes visible.
- A signed URL's token is its credential: a refused one is never echoed back in the
  problem's ``instance``, nor in a log line.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr

from keel.settings import S3Settings, Settings
from tests.storage.conftest import StorageApi, storage_api, storage_settings
from tests.support.clamd import ClamdServer
from tests.support.keel_process import free_port

API = "/storage/v1"


@pytest.fixture
async def storage_on_a_dead_store(
    settings: Settings, clamd_server: ClamdServer
) -> AsyncIterator[StorageApi]:
    dead = S3Settings(
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        bucket="nobody-home",
        access_key_id="test",
        secret_access_key=SecretStr("test"),
        connect_timeout_seconds=0.5,
        read_timeout_seconds=0.5,
    )
    configured = storage_settings(
        settings, clamd_address=clamd_server.address, backend="local", s3=None
    )
    configured = configured.model_copy(
        update={"storage": configured.storage.model_copy(update={"backend": "s3", "s3": dead})}
    )
    async with storage_api(configured) as api:
        yield api


def assert_unavailable(answer: httpx.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert int(answer.headers["retry-after"]) >= 1
    assert "test" not in answer.json().get("detail", "").split()  # no credential in the detail


async def test_uploads_and_parts_answer_503_while_the_store_is_down(
    storage_on_a_dead_store: StorageApi,
) -> None:
    api = storage_on_a_dead_store
    await api.bucket("docs", scan=False)
    assert_unavailable(await api.put("docs", "a.bin", b"\x00" * 1000))
    started = await api.call("POST", "/buckets/docs/uploads", json={"key": "big.bin"})
    assert started.status_code == 201, started.text
    upload_id = started.json()["upload_id"]
    assert_unavailable(
        await api.call(
            "PUT",
            f"/buckets/docs/uploads/{upload_id}/parts/1",
            content=b"\x00" * 1000,
            headers={"Content-Type": "application/octet-stream"},
        )
    )
    # Nothing became visible, and nothing is counted.
    assert (await api.get("docs", "a.bin")).status_code == 404
    assert await api.versions("docs") == []
    assert await api.usage("docs") == (0, 0)


async def test_a_refused_signed_url_never_shows_its_token(
    storage: StorageApi, capsys: pytest.CaptureFixture[str]
) -> None:
    await storage.bucket("pics", scan=False)
    assert (await storage.put("pics", "a.bin", b"\x00\x01" * 100)).status_code == 201
    presigned = await storage.call(
        "POST", "/buckets/pics/presign", json={"method": "GET", "key": "a.bin", "expires_in": 60}
    )
    assert presigned.status_code == 200, presigned.text
    url = httpx.URL(presigned.json()["url"])
    token = url.path.rsplit("/", 1)[1]
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    for path in (f"{API}/signed/{tampered}", f"{API}/signed/{tampered}/extra"):
        answer = await storage.client.get(path)
        assert answer.status_code in (403, 404), answer.text
        problem = answer.json()
        assert tampered not in answer.text
        assert problem["instance"].startswith(f"{API}/signed/{{token}}")
    # A token over the size cap is refused by the request middleware's own rules or the
    # route: either way without the token in the answer.
    huge = uuid.uuid4().hex * 200
    answer = await storage.client.get(f"{API}/signed/{huge}")
    assert answer.status_code in (400, 403, 404, 414), answer.text
    assert huge not in answer.text
    assert tampered not in capsys.readouterr().err
