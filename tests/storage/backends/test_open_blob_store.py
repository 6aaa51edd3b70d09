"""``open_blob_store``: the store the settings name, reachable with what they hold."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from keel.settings import S3Settings, StorageSettings
from keel.storage.backends import LocalBlobStore, S3BlobStore, open_blob_store
from tests.support.s3 import S3TestServer


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_the_local_store_lives_under_the_data_directory_by_default(tmp_path: Path) -> None:
    store = open_blob_store(StorageSettings(), tmp_path)

    assert isinstance(store, LocalBlobStore)
    await store.write("t/b/o", one_chunk(b"bytes"))
    assert (tmp_path / "storage" / "t" / "b" / "o").read_bytes() == b"bytes"


async def test_the_local_store_lives_under_local_path_when_set(tmp_path: Path) -> None:
    settings = StorageSettings(local_path=tmp_path / "elsewhere")

    store = open_blob_store(settings, tmp_path / "data")

    await store.write("o", one_chunk(b"bytes"))
    assert (tmp_path / "elsewhere" / "o").read_bytes() == b"bytes"


async def test_the_s3_store_uses_the_settings_bucket_prefix_and_credentials(
    s3_server: S3TestServer, tmp_path: Path
) -> None:
    settings = StorageSettings(
        backend="s3",
        s3=S3Settings(
            endpoint_url=s3_server.endpoint_url,
            region=s3_server.region,
            bucket=s3_server.bucket,
            prefix="/from-settings/",
            access_key_id=s3_server.access_key_id,
            secret_access_key=SecretStr(s3_server.secret_access_key),
        ),
    )

    store = open_blob_store(settings, tmp_path)
    try:
        assert isinstance(store, S3BlobStore)
        await store.write("t/b/o", one_chunk(b"bytes"))
    finally:
        await store.aclose()

    stored = s3_server.client().get_object(Bucket=s3_server.bucket, Key="from-settings/t/b/o")
    assert stored["Body"].read() == b"bytes"


def test_the_s3_store_needs_a_bucket(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bucket"):
        open_blob_store(StorageSettings(backend="s3"), tmp_path)
