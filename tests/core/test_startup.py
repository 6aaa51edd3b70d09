"""A serving process's start-up (:mod:`keel.core.startup`): the collector paused until the
app has started, and left alone when something else paused it."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from keel.core.startup import (
    garbage_collection_paused,
    pause_garbage_collection,
    resume_garbage_collection,
)


@pytest.fixture(autouse=True)
def collector_enabled_afterwards() -> Iterator[None]:
    yield
    gc.enable()


def test_the_collector_is_paused_for_the_block_and_resumed_after() -> None:
    with garbage_collection_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_the_app_resumes_it_first_and_the_block_then_changes_nothing() -> None:
    with garbage_collection_paused():
        resume_garbage_collection()  # as the app's lifespan does once started
        assert gc.isenabled()
        gc.disable()  # whatever a later part of the process decides stays decided
    assert not gc.isenabled()


def test_a_collector_paused_elsewhere_is_not_resumed() -> None:
    gc.disable()
    pause_garbage_collection()
    resume_garbage_collection()
    assert not gc.isenabled()
