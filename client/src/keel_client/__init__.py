"""keel-client: the SDK every service of the fleet installs to call Keel.

The front door is :class:`Keel` (async) or :class:`SyncKeel`: one connection pool, one
circuit breaker per host, one token source, and a sub-client per service::

    from keel_client import Keel

    async with Keel.from_env() as keel:          # KEEL_URL, KEEL_TOKEN
        password = await keel.secrets.get("apps/billing/db", "password")

Each service's package (``keel_client.secrets``, ``.config``, ``.flags``, ``.audit``,
``.auth``) also has clients that work alone, and ``keel_client.http`` is the resilient base
client they are built on.

The package never imports the ``keel`` server. Logic both sides need (flag evaluation,
Merkle proof verification, wire models, token verification) lives here and the server
imports it.
"""

from keel_client._version import __version__

# Not ``typing.TYPE_CHECKING``: importing ``typing`` alone would triple the cost of
# ``import keel_client`` (the ``keel`` command's start, a process using only pure pieces).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from keel_client._keel import Keel
    from keel_client._sync_keel import SyncKeel


def __getattr__(name: str) -> object:
    """The front door, imported on first use: it brings every client's HTTP stack."""
    if name == "Keel":
        from keel_client._keel import Keel

        return Keel
    if name == "SyncKeel":
        from keel_client._sync_keel import SyncKeel

        return SyncKeel
    raise AttributeError(f"module 'keel_client' has no attribute {name!r}")


__all__ = ["Keel", "SyncKeel", "__version__"]
