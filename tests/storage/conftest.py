"""Fixtures of the storage service's tests.

``s3_server``: moto's S3 server on 127.0.0.1, started once per test session (per xdist
worker), with a bucket of its own (:class:`tests.support.s3.S3TestServer`). Tests sharing it
keep apart by a prefix of their own: ``s3_server.blob_store(prefix=f"t/{uuid4().hex}")``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.clamd import ClamdServer, run_clamd
from tests.support.s3 import S3TestServer, moto_server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3TestServer]:
    with moto_server() as s3:
        yield s3


# ``clamd_server``: a real clamd on 127.0.0.1 (TCP and a unix socket), started once per test
# session (per xdist worker), with the tests' own signatures (tests.support.clamd).
@pytest.fixture(scope="session")
def clamd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdServer]:
    with run_clamd(tmp_path_factory.mktemp("clamd")) as server:
        yield server
