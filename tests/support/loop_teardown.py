"""A bounded end to an event loop's leftover tasks.

``asyncio.Runner.close`` (which pytest-asyncio calls after each test's loop) cancels every
task left on the loop and then waits for all of them with no limit. A task that catches its
cancellation and goes on awaiting something that never comes (a connection to a server the
test has stopped) hangs the whole xdist worker there, after its tests have passed: CI saw
this twice, cut off at 90 minutes with nothing saying which task it was.

``install`` replaces that wait with one of ``LEFTOVER_TASK_WAIT_SECONDS``. A task still
running then is named on stderr with its stack and in a ``RuntimeWarning`` (both in the run's
output), and left behind so the run goes on; nothing is hidden, and the run ends.
"""

from __future__ import annotations

import asyncio
import asyncio.runners
import io
import sys
import warnings

LEFTOVER_TASK_WAIT_SECONDS = 30.0


def _cancel_all_tasks_bounded(loop: asyncio.AbstractEventLoop) -> None:
    to_cancel = asyncio.all_tasks(loop)
    if not to_cancel:
        return
    for task in to_cancel:
        task.cancel()
    _, pending = loop.run_until_complete(
        asyncio.wait(to_cancel, timeout=LEFTOVER_TASK_WAIT_SECONDS)
    )
    for task in pending:
        stack = io.StringIO()
        task.print_stack(file=stack)
        message = (
            f"a task left on the test's event loop ignored its cancellation for "
            f"{LEFTOVER_TASK_WAIT_SECONDS:g} s and was abandoned: {task!r}\n{stack.getvalue()}"
        )
        print(message, file=sys.__stderr__, flush=True)
        warnings.warn(message, RuntimeWarning, stacklevel=1)
    for task in to_cancel - pending:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "unhandled exception during the event loop's shutdown",
                    "exception": task.exception(),
                    "task": task,
                }
            )


def install() -> None:
    """Make every ``asyncio.Runner`` (and so ``asyncio.run``) end its leftovers in bounded time."""
    asyncio.runners._cancel_all_tasks = _cancel_all_tasks_bounded  # type: ignore[attr-defined]
