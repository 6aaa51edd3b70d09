"""The pytest side of ``keel_client.testing``: the ``keel_manifest`` ini option and the
``keel_server_options``, ``keel_server`` and ``keel_env`` fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keel_client.testing._embedded import EmbeddedKeel
from keel_client.testing._manifest import find_manifest

__all__ = ["keel_env", "keel_server", "keel_server_options", "pytest_addoption"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "keel_manifest",
        "The Keel manifest keel_server applies (relative to the rootdir; default: keel.toml "
        "there when it exists; the KEEL_MANIFEST environment variable wins).",
        type="string",
        default="",
    )


@pytest.fixture(scope="session")
def keel_server_options() -> dict[str, Any]:
    """Keyword arguments of the session's :class:`EmbeddedKeel` (``database_url``,
    ``services``, ``env``, ``manifest``...): override it in a conftest to change them.
    ``manifest`` given here (even None) replaces the manifest found for the run."""
    return {}


@pytest.fixture(scope="session")
def keel_server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    keel_server_options: dict[str, Any],
) -> Iterator[EmbeddedKeel]:
    """A real Keel for the test session, provisioned from the service's manifest; stopped at
    the end of the session. Its data stays in pytest's temporary directory (``keel0``)."""
    options = dict(keel_server_options)
    if "manifest" not in options:
        rootdir = Path(request.config.rootpath)
        options["manifest"] = find_manifest(rootdir, str(request.config.getini("keel_manifest")))
    options.setdefault("data_dir", tmp_path_factory.mktemp("keel"))
    with EmbeddedKeel(**options) as server:
        yield server


@pytest.fixture
def keel_env(keel_server: EmbeddedKeel, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """``KEEL_URL`` and ``KEEL_TOKEN`` (the service token) set in ``os.environ`` for the test,
    so the service's own ``Keel.from_env()`` finds the embedded Keel; returns them."""
    variables = keel_server.env
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return variables
