"""Modules imported on first use: what a service needs only when it does its work, not to
start. A service whose work needs heavy libraries (Jinja, DKIM, provider SDKs) keeps them out
of every start::

    if TYPE_CHECKING:
        from keel.notify import templating
    else:
        templating = lazy_module("keel.notify.templating")

and names what is called later as ``"module:function"`` (:func:`import_named`): its routes
(``ServiceSpec.router``, built on the first request under its prefix), a task's handler.
"""

from __future__ import annotations

import importlib
import types
from typing import Any


class _LazyModule(types.ModuleType):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._keel_module: types.ModuleType | None = None

    def __getattr__(self, attribute: str) -> Any:
        module = self._keel_module
        if module is None:
            module = self._keel_module = importlib.import_module(self.__name__)
        return getattr(module, attribute)


def lazy_module(name: str) -> Any:
    """Module ``name``, imported when one of its attributes is first read."""
    return _LazyModule(name)


def import_named(reference: str) -> Any:
    """The object a ``"module:attribute"`` reference names, its module imported now."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)
