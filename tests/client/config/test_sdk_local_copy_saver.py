"""``keel_client._follower.LatestSaver``: the local copy written off the event loop, one write
at a time, only the latest of the snapshots handed over while a write is in flight; and the
stream's version check the config and flags clients share."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import threading
from pathlib import Path

import pytest

from keel_client._follower import LatestSaver, is_newer
from keel_client.config._snapshot import LocalCopy, Snapshot

logger = logging.getLogger("tests.local_copy_saver")


class GatedWrites:
    """A write that records what it wrote and, while the gate is shut, blocks its thread."""

    def __init__(self) -> None:
        self.written: list[int] = []
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __call__(self, snapshot: int) -> None:
        self.entered.set()
        if not self.gate.wait(timeout=10):
            raise TimeoutError("the test never opened the gate")
        self.written.append(snapshot)


async def test_save_returns_at_once_and_the_write_happens_in_a_thread() -> None:
    writes = GatedWrites()
    saver = LatestSaver(writes, logger=logger)
    saver.save(1)  # returns although the write blocks: it is not on the event loop
    assert await asyncio.to_thread(writes.entered.wait, 10)
    assert writes.written == []
    assert not saver.is_idle
    writes.gate.set()
    await saver.flush()
    assert writes.written == [1]
    assert saver.is_idle


async def test_saves_during_a_write_are_coalesced_into_the_latest_one() -> None:
    writes = GatedWrites()
    saver = LatestSaver(writes, logger=logger)
    saver.save(1)
    assert await asyncio.to_thread(writes.entered.wait, 10)  # revision 1 is being written
    for later in (2, 3, 4):
        saver.save(later)
    writes.gate.set()
    await saver.flush()
    assert writes.written == [1, 4]  # 2 and 3 would have been overwritten at once

    saver.save(5)  # an idle saver starts again
    await saver.flush()
    assert writes.written == [1, 4, 5]


async def test_a_save_waits_its_delay_so_a_burst_is_one_write_and_flush_cuts_the_wait() -> None:
    """The write comes ``delay`` after the first save, off the moment a change reaches every
    client of the process; the saves meanwhile are one write, of the latest."""
    written: list[int] = []
    landed = threading.Event()

    def write(snapshot: int) -> None:
        written.append(snapshot)
        landed.set()

    loop = asyncio.get_running_loop()
    saver = LatestSaver(write, logger=logger, delay=0.3)
    started = loop.time()
    for revision in (1, 2, 3):
        saver.save(revision)
    await asyncio.sleep(0.1)
    assert written == []  # still waiting
    assert await asyncio.to_thread(landed.wait, 10)
    assert loop.time() - started >= 0.3
    await saver.flush()
    assert written == [3]

    flushed = LatestSaver(write, logger=logger, delay=30)
    started = loop.time()
    flushed.save(4)
    await flushed.flush()  # closing: written now, not in 30 s
    assert written == [3, 4]
    assert loop.time() - started < 5


async def test_a_failed_write_is_logged_and_the_next_save_still_lands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    written: list[int] = []

    def write(snapshot: int) -> None:
        if snapshot == 1:
            raise ValueError("a value JSON cannot hold")
        written.append(snapshot)

    saver = LatestSaver(write, logger=logger)
    with caplog.at_level(logging.ERROR, logger=logger.name):
        saver.save(1)
        await saver.flush()
    assert [r.getMessage() for r in caplog.records] == ["keel: writing the local copy failed"]
    saver.save(2)
    await saver.flush()
    assert written == [2]


async def test_a_cancelled_flush_does_not_cancel_the_write() -> None:
    writes = GatedWrites()
    saver = LatestSaver(writes, logger=logger)
    saver.save(1)
    assert await asyncio.to_thread(writes.entered.wait, 10)
    flushing = asyncio.create_task(saver.flush())
    await asyncio.sleep(0.01)
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    writes.gate.set()
    await saver.flush()
    assert writes.written == [1]


async def test_the_local_copy_ends_at_the_latest_snapshot_atomic_and_private(
    tmp_path: Path,
) -> None:
    copy = LocalCopy(tmp_path / "keel" / "config" / "billing-production.json")
    revisions_written: list[int] = []

    def write(snapshot: Snapshot) -> None:
        copy.write(snapshot)
        revisions_written.append(snapshot.revision)

    saver = LatestSaver(write, logger=logger)
    for revision in range(1, 51):  # 50 changes in a burst, as a fast writer makes them
        saver.save(Snapshot("billing", "production", revision, {"workers": revision}))
    await saver.flush()
    assert copy.read("billing", "production") == Snapshot(
        "billing", "production", 50, {"workers": 50}
    )
    assert revisions_written[-1] == 50
    assert revisions_written == sorted(revisions_written)  # the file only moves forward
    assert len(revisions_written) < 50  # the burst was coalesced
    assert stat.S_IMODE(copy.path.stat().st_mode) == 0o600
    assert os.listdir(copy.path.parent) == ["billing-production.json"]
    assert json.loads(copy.path.read_text())["revision"] == 50


def test_only_an_integer_above_the_current_version_is_newer() -> None:
    assert is_newer(4, 3)
    assert not is_newer(3, 3)
    assert not is_newer(2, 3)
    assert not is_newer(True, 0)  # a bool is an int to Python, not a version
    assert not is_newer("4", 3)
    assert not is_newer(None, 0)
    assert not is_newer(4.0, 3)
