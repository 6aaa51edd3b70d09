"""The tests' bounded loop teardown (``tests/support/loop_teardown.py``): a task that ignores its
cancellation is named and abandoned, not waited for forever; a task that obeys ends as before."""

from __future__ import annotations

import asyncio
import threading
import warnings

import pytest

from tests.support import loop_teardown


async def _stubborn() -> None:
    while True:
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            continue


def _run_in_thread(main: object) -> list[warnings.WarningMessage]:
    """``asyncio.run`` in a thread of its own (this test's own loop may be running), with the
    warnings it raised."""
    caught: list[warnings.WarningMessage] = []

    def run() -> None:
        with warnings.catch_warnings(record=True) as recorded:
            warnings.simplefilter("always")
            asyncio.run(main)  # type: ignore[arg-type]
        caught.extend(recorded)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "the loop's teardown waited for a task that never ends"
    return caught


def test_a_task_that_ignores_cancellation_is_named_and_abandoned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loop_teardown, "LEFTOVER_TASK_WAIT_SECONDS", 0.2)
    leftovers: list[asyncio.Task[None]] = []

    async def main() -> None:
        leftovers.append(asyncio.create_task(_stubborn(), name="stubborn-leftover"))
        await asyncio.sleep(0)

    caught = _run_in_thread(main())
    messages = [str(warning.message) for warning in caught]
    assert any("stubborn-leftover" in message and "_stubborn" in message for message in messages)


def test_a_task_that_obeys_is_cancelled_without_a_warning() -> None:
    cancelled = []
    leftovers: list[asyncio.Task[None]] = []

    async def obedient() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main() -> None:
        leftovers.append(asyncio.create_task(obedient()))
        await asyncio.sleep(0)

    caught = _run_in_thread(main())
    assert cancelled == [True]
    assert not [w for w in caught if "abandoned" in str(w.message)]
