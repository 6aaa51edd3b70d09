"""A real Keel for a service's own tests: :class:`EmbeddedKeel`, and a pytest plugin.

Enable the plugin in the service's ``conftest.py``::

    pytest_plugins = ["keel_client.testing"]

    async def test_the_flag_is_off(keel_env):           # KEEL_URL, KEEL_TOKEN set
        async with Keel.from_env() as keel:
            async with keel.flags.client("development") as flags:
                assert not flags.is_enabled("new-checkout", {"key": "user-1"})

Fixtures: ``keel_server`` (session: an :class:`EmbeddedKeel` started with the manifest
``keel.toml`` of pytest's rootdir, the ``keel_manifest`` ini option or ``KEEL_MANIFEST``),
``keel_env`` (a test's ``KEEL_URL`` and ``KEEL_TOKEN``) and ``keel_server_options`` (session;
override it to pass ``database_url``, ``services`` or ``env``).

Without pytest: ``with EmbeddedKeel(manifest="keel.toml") as keel: ...``. Both run the
``keel`` command of the server distribution (``pip install keel``); this package never
imports the server.
"""

from importlib.util import find_spec as _find_spec

from keel_client.testing._commands import EmbeddedKeelError
from keel_client.testing._embedded import EmbeddedKeel

__all__ = ["EmbeddedKeel", "EmbeddedKeelError"]

# The fixtures need pytest; EmbeddedKeel alone works in a process without it.
if _find_spec("pytest") is not None:
    from keel_client.testing._plugin import (
        keel_env,
        keel_server,
        keel_server_options,
        pytest_addoption,
    )

    __all__ += ["keel_env", "keel_server", "keel_server_options", "pytest_addoption"]
