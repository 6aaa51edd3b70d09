"""The worker's side of a bucket's ``on_clean`` hook: :func:`clean_object` turns a task of
one :class:`~keel_client.storage.CleanObject` into the task a ``keel_client.jobs`` worker
runs with the job's arguments.

A bucket whose policy has ``on_clean: {queue, task}`` makes Keel enqueue job ``task`` on
``queue`` for every version that becomes clean, its arguments ``{bucket, key, version_id,
size, content_type, etag}``. Only clean bytes ever reach the task.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from keel_client.storage._models import CleanObject

__all__ = ["clean_object"]

R = TypeVar("R")


def clean_object(
    function: Callable[[CleanObject], Awaitable[R]],
) -> Callable[..., Coroutine[Any, Any, R]]:
    """The job's arguments as one :class:`CleanObject` for the ``async`` ``function``.

    Example::

        worker = Worker(queues=["uploads"])

        @worker.task("uploads.process")
        @clean_object
        async def process(obj: CleanObject) -> dict[str, int]:
            data = await keel.storage.download(obj.bucket, obj.key, version_id=obj.version_id)
            return {"bytes": len(data)}
    """
    if not inspect.iscoroutinefunction(function):
        raise TypeError("clean_object takes an async function (async def)")

    @functools.wraps(function)
    async def task(*args: Any, **kwargs: Any) -> R:
        if kwargs and args:
            raise TypeError("a clean-object job has keyword arguments or one object, not both")
        return await function(CleanObject.of(kwargs or list(args)))

    return task
