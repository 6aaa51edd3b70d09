"""Names of a package imported from one of its modules on first use (PEP 562).

The SDK's packages hold pure pieces the Keel server shares (Merkle proofs, the flags engine)
next to clients that bring an HTTP stack (httpx, its cache, Redis's client for the cache's
storage): about a quarter of a second at import, and memory, that a process using only the
pure pieces does without.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping


def lazy_names(package: str, modules: Mapping[str, Iterable[str]]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package``: each name of ``modules`` (module → names)
    from ``package.<module>``, imported when first asked for.

    Example (in a package's ``__init__.py``)::

        __getattr__ = lazy_names(__name__, {"client": {"AuditClient", "SyncAuditClient"}})
    """
    home = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> object:
        module = home.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__
