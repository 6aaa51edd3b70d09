"""keel-client: the SDK every service of the fleet installs to call Keel.

The package never imports the ``keel`` server. Logic both sides need (flag evaluation,
Merkle proof verification, wire models, token verification) lives here and the server
imports it.
"""

from keel_client._version import __version__

__all__ = ["__version__"]
