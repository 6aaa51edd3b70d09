"""A serving process's start-up: the cyclic garbage collector waits until the app is ready.

Starting ``keel serve`` imports FastAPI, SQLAlchemy, pydantic and every service and builds
every route: about 160 000 objects that live as long as the process. At its default
thresholds the collector walked them again and again while they were being made: 330 young,
30 middle and 2 full collections, 0.1-0.25 s of the 1.2 s to the first ready answer
(issue 15). So the ``keel`` command pauses it while it parses its command line and imports
what the command runs; every command but ``serve`` resumes it as it starts, and ``serve``'s
app once started, after :func:`gc.freeze` has set aside what start-up built, which no later
collection walks again (so every later full collection is shorter too). The few cycles
start-up left unreachable (about 1 700 objects, the CLI's start-up check among them) stay
allocated.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_paused = False


@contextmanager
def garbage_collection_paused() -> Iterator[None]:
    """No cyclic garbage collection in the block, unless :func:`resume_garbage_collection`
    resumes it first (as the app does once started); resumed when the block ends."""
    pause_garbage_collection()
    try:
        yield
    finally:
        resume_garbage_collection()


def pause_garbage_collection() -> None:
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume_garbage_collection(*, freeze: bool = False) -> None:
    """Resume what :func:`pause_garbage_collection` paused (nothing otherwise); ``freeze``:
    first set aside every object alive now, start-up being over."""
    global _paused
    if not _paused:
        return
    if freeze:
        gc.freeze()
    gc.enable()
    _paused = False


def import_structlog_without_rich() -> None:
    """Import structlog as if rich were not installed (rich itself stays importable).

    structlog imports rich, and rich pygments, when it finds them, for the default exception
    formatter of its console renderer: 45 ms of CPU and 5.4 MB of RSS of every start (issue
    15). Keel's logging formats exceptions itself (``format_exc_info``, then its redaction)
    before any renderer, so its lines are the same either way. Only the processes the
    ``keel`` command starts do this: an app that embeds Keel imports structlog as it is.
    """
    if "structlog" in sys.modules:
        return
    hidden = "rich" not in sys.modules
    if hidden:
        sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` fails
    try:
        import structlog.dev
        import structlog.tracebacks  # noqa: F401
    finally:
        if hidden:
            del sys.modules["rich"]
