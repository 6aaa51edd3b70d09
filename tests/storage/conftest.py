"""Fixtures of the storage service's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.clamd import ClamdServer, run_clamd


# ``clamd_server``: a real clamd on 127.0.0.1 (TCP and a unix socket), started once per test
# session (per xdist worker), with the tests' own signatures (tests.support.clamd).
@pytest.fixture(scope="session")
def clamd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdServer]:
    with run_clamd(tmp_path_factory.mktemp("clamd")) as server:
        yield server
