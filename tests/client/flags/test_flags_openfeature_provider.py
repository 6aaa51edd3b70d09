"""``KeelProvider`` through the official ``openfeature-sdk`` API (``api.get_client()``)
against a real Keel (SQLite and PostgreSQL): the four value types and objects with their
variants and reasons, error codes, hooks seeing the evaluation details, tracking, the
configuration-changed event, and a sync client started and shut down by the provider."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagEvaluationDetails, Reason
from openfeature.hook import Hook, HookContext
from openfeature.provider import ProviderStatus
from openfeature.track import TrackingEventDetails

from keel_client.flags import FlagsClient, SyncFlagsClient
from keel_client.flags.openfeature import KeelProvider, keel_context
from keel_client.http import RetryPolicy
from tests.client.flags.flags_sdk_support import (
    BUTTON,
    CHECKOUT,
    DARK,
    LIMITS,
    NEEDS_DARK,
    RATIO,
    WORKERS,
    Environment,
    eventually,
    toggle,
)
from tests.support.keel_process import free_port
from tests.support.tenants import TenantAdmin

CORP = EvaluationContext("user-7", {"email": "ana@corp.com"})
OTHER = EvaluationContext("user-8", {"email": "bob@example.com"})


@pytest.fixture(autouse=True)
def _clean_openfeature() -> Iterator[None]:
    yield
    api.clear_providers()
    api.clear_hooks()


@pytest.fixture
async def flags(
    admin: TenantAdmin, environment: Environment, keel_url: str
) -> AsyncIterator[FlagsClient]:
    async with FlagsClient(environment.key, keel_url, auth=admin.api_key, persist=False,
                           flush_interval=3600) as client:  # fmt: skip
        yield client


def domain() -> str:
    return f"d-{uuid.uuid4().hex[:8]}"


async def test_every_value_type_with_variants_and_reasons(flags: FlagsClient) -> None:
    name = domain()
    api.set_provider_and_wait(KeelProvider(flags), name)
    client = api.get_client(name)
    assert client.get_provider_status() == ProviderStatus.READY
    assert api.get_provider_metadata(name).name == "keel"

    boolean = client.get_boolean_details(CHECKOUT, False, CORP)
    assert (boolean.value, boolean.variant, boolean.reason) == (True, "on", Reason.TARGETING_MATCH)
    assert boolean.error_code is None
    assert boolean.flag_metadata["rule_id"] == "corp"
    assert boolean.flag_metadata["rule_index"] == 0
    assert boolean.flag_metadata["reason_kind"] == "RULE_MATCH"
    assert boolean.flag_metadata["version"] == flags.version
    targeted = client.get_boolean_details(CHECKOUT, False, EvaluationContext("beta-1"))
    assert (targeted.value, targeted.reason) == (True, Reason.TARGETING_MATCH)
    assert "rule_id" not in targeted.flag_metadata
    assert client.get_boolean_value(CHECKOUT, True, OTHER) is False

    string = client.get_string_details(BUTTON, "red", OTHER)
    assert string.value in ("blue", "green")
    assert string.variant == string.value
    assert string.reason == Reason.SPLIT  # a fallthrough rollout
    assert string.flag_metadata["in_experiment"] is True

    integer = client.get_integer_details(WORKERS, 1, OTHER)
    assert (integer.value, integer.variant, integer.reason) == (16, "many", Reason.DEFAULT)

    ratio = client.get_float_details(RATIO, 1.0, OTHER)
    assert (ratio.value, ratio.variant, ratio.reason) == (0.25, "low", Reason.DEFAULT)
    as_float = client.get_float_details(WORKERS, 1.0, OTHER)
    assert as_float.value == 16.0
    assert isinstance(as_float.value, float)

    limits = client.get_object_details(LIMITS, {}, OTHER)
    assert (limits.value, limits.variant) == ({"per_minute": 60}, "small")

    off = client.get_boolean_details(DARK, True, OTHER)
    assert (off.value, off.variant, off.reason) == (False, "off", Reason.DISABLED)
    failed = client.get_boolean_details(NEEDS_DARK, True, OTHER)
    assert (failed.value, failed.reason) == (False, "PREREQUISITE_FAILED")
    assert failed.flag_metadata["prerequisite_key"] == DARK

    # Async faces answer the same.
    assert (await client.get_integer_value_async(WORKERS, 1, OTHER)) == 16


async def test_error_codes(flags: FlagsClient) -> None:
    name = domain()
    api.set_provider_and_wait(KeelProvider(flags), name)
    client = api.get_client(name)

    def error(details: FlagEvaluationDetails[Any], default: Any) -> ErrorCode | None:
        assert details.value == default
        assert details.reason == Reason.ERROR
        assert details.error_message
        return details.error_code

    assert error(client.get_boolean_details("nope", True, CORP), True) == ErrorCode.FLAG_NOT_FOUND
    assert error(client.get_string_details(CHECKOUT, "x", CORP), "x") == ErrorCode.TYPE_MISMATCH
    assert error(client.get_integer_details(RATIO, 3, OTHER), 3) == ErrorCode.TYPE_MISMATCH
    assert error(client.get_object_details(WORKERS, {}, OTHER), {}) == ErrorCode.TYPE_MISMATCH
    assert error(client.get_boolean_details(LIMITS, False, OTHER), False) == (
        ErrorCode.TYPE_MISMATCH
    )
    missing = client.get_boolean_details(CHECKOUT, True, EvaluationContext(None, {"a": 1}))
    assert error(missing, True) == ErrorCode.TARGETING_KEY_MISSING


async def test_a_malformed_flag_is_a_parse_error_and_a_non_object_json_a_mismatch(
    environment: Environment, tmp_path: Path
) -> None:
    """Keel refuses malformed flags at write time: this snapshot comes from a local copy
    written by hand, with Keel unreachable."""
    snapshot = {
        "environment": environment.key,
        "version": 3,
        "flags": {
            "broken": {"key": "broken", "type": "boolean", "on": True,
                       "variations": [{"id": "on", "value": True}],
                       "fallthrough": {"variation": "missing"}},
            "text": {"key": "text", "type": "json", "on": True,
                     "variations": [{"id": "t", "value": "just text"}],
                     "fallthrough": {"variation": "t"}},
        },
        "segments": {},
    }  # fmt: skip
    cache = tmp_path / "flags.json"
    cache.write_text(
        json.dumps({"format": 1, "application": "flags", "environment": environment.key,
                    "revision": 3, "values": snapshot})
    )  # fmt: skip
    async with FlagsClient(
        environment.key, f"http://127.0.0.1:{free_port()}", auth="x", cache_path=cache,
        retry=RetryPolicy(max_retries=0), send_events=False,
    ) as offline:  # fmt: skip
        assert offline.loaded_from == "file"
        name = domain()
        api.set_provider_and_wait(KeelProvider(offline), name)
        client = api.get_client(name)
        broken = client.get_boolean_details("broken", False, CORP)
        assert (broken.error_code, broken.value) == (ErrorCode.PARSE_ERROR, False)
        assert broken.flag_metadata["error_kind"] == "MALFORMED_FLAG"
        text = client.get_object_details("text", {"d": 1}, CORP)
        assert (text.error_code, text.value) == (ErrorCode.TYPE_MISMATCH, {"d": 1})
        assert client.get_string_value("text", "", CORP) == "just text"  # json: any value


class RecordingHook(Hook):
    def __init__(self) -> None:
        self.after_details: list[FlagEvaluationDetails[Any]] = []
        self.errors: list[Exception] = []
        self.finally_details: list[FlagEvaluationDetails[Any]] = []
        self.contexts: list[EvaluationContext] = []

    def before(self, hook_context: HookContext, hints: Any) -> EvaluationContext | None:
        self.contexts.append(hook_context.evaluation_context)
        return EvaluationContext(attributes={"email": "hook@corp.com"})

    def after(self, hook_context: HookContext, details: Any, hints: Any) -> None:
        self.after_details.append(details)

    def error(self, hook_context: HookContext, exception: Exception, hints: Any) -> None:
        self.errors.append(exception)

    def finally_after(self, hook_context: HookContext, details: Any, hints: Any) -> None:
        self.finally_details.append(details)


async def test_hooks_see_the_evaluation_details_and_can_add_context(flags: FlagsClient) -> None:
    name = domain()
    api.set_provider_and_wait(KeelProvider(flags), name)
    client = api.get_client(name)
    hook = RecordingHook()
    client.add_hooks([hook])

    # The hook's context is merged in: the rule on email matches through it.
    details = client.get_boolean_details(CHECKOUT, False, EvaluationContext("user-9"))
    assert details.value is True
    seen = hook.after_details[-1]
    assert (seen.flag_key, seen.value, seen.variant) == (CHECKOUT, True, "on")
    assert seen.reason == Reason.TARGETING_MATCH
    assert seen.flag_metadata["rule_id"] == "corp"
    assert hook.contexts[-1].targeting_key == "user-9"

    client.get_boolean_details("nope", False, CORP)
    assert len(hook.errors) == 1
    assert hook.finally_details[-1].error_code == ErrorCode.FLAG_NOT_FOUND


async def test_tracking_sends_a_conversion(flags: FlagsClient) -> None:
    name = domain()
    api.set_provider_and_wait(KeelProvider(flags), name)
    client = api.get_client(name)
    client.track("purchase", CORP, TrackingEventDetails(value=9.5))
    client.track("purchase", EvaluationContext(None))  # no key: dropped, not raised
    assert flags.event_stats.queued == 1
    assert await flags.flush() is True
    assert flags.event_stats.sent == 1


async def test_a_toggle_emits_configuration_changed(
    client: httpx.AsyncClient, flags: FlagsClient, environment: Environment
) -> None:
    name = domain()
    api.set_provider_and_wait(KeelProvider(flags), name)
    openfeature_client = api.get_client(name)
    changed: list[EventDetails] = []
    openfeature_client.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, changed.append)
    version = await toggle(client, environment, CHECKOUT, on=False)
    await eventually(lambda: bool(changed))
    assert changed[-1].flags_changed == [CHECKOUT]
    assert changed[-1].metadata["version"] == version
    assert openfeature_client.get_boolean_details(CHECKOUT, True, CORP).reason == Reason.DISABLED


async def test_the_provider_starts_and_shuts_down_a_sync_client(
    admin: TenantAdmin, environment: Environment, keel_url: str
) -> None:
    sync = SyncFlagsClient(environment.key, keel_url, auth=admin.api_key, persist=False,
                           send_events=False)  # fmt: skip
    name = domain()
    await asyncio.to_thread(api.set_provider_and_wait, KeelProvider(sync), name)
    assert sync.is_started
    client = api.get_client(name)
    assert client.get_boolean_value(CHECKOUT, False, CORP) is True
    await asyncio.to_thread(api.clear_providers)
    assert not sync.is_started


async def test_a_client_without_a_snapshot_leaves_the_provider_in_error(
    environment: Environment,
) -> None:
    never = FlagsClient(environment.key, "http://127.0.0.1:9", auth="x", persist=False)
    name = domain()
    provider = KeelProvider(never, init_timeout=0.1)
    await asyncio.to_thread(api.set_provider, provider, name)
    client = api.get_client(name)
    await eventually(lambda: client.get_provider_status() == ProviderStatus.ERROR)
    details = client.get_boolean_details(CHECKOUT, True, CORP)
    assert (details.value, details.reason) == (True, Reason.ERROR)
    await never.aclose()


def test_evaluation_context_to_keel_context() -> None:
    from datetime import UTC, datetime

    context = EvaluationContext(
        "user-1",
        {"plan": "pro", "seats": 3, "tags": ["a"], "signed_up": datetime(2026, 1, 2, 3, 4, 5),
         "key": "ignored", "org": {"since": datetime(2026, 1, 1, tzinfo=UTC)}},
    )  # fmt: skip
    assert keel_context(context) == {
        "key": "user-1", "plan": "pro", "seats": 3, "tags": ["a"],
        "signed_up": "2026-01-02T03:04:05+00:00", "org": {"since": "2026-01-01T00:00:00+00:00"},
    }  # fmt: skip
    assert keel_context(EvaluationContext(None, {"key": "k"})) == {"key": "k"}
    assert keel_context(EvaluationContext(None, {"a": 1})) is None
    assert keel_context(None) is None
