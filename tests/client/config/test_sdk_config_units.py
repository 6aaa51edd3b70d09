"""The config SDK's pure parts: changed keys, the local copy file, names, the public API."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import keel_client.config
from keel_client.changes import ServerSentEvent, _change_of
from keel_client.config._snapshot import (
    LocalCopy,
    LocalCopyError,
    Snapshot,
    changed_keys,
    check_name,
    default_cache_path,
)


def test_changed_keys_are_added_removed_and_changed_ones() -> None:
    before = {"a": 1, "b": {"x": 1}, "c": True, "same": [1]}
    after = {"a": 1, "b": {"x": 2}, "d": None, "same": [1]}
    assert changed_keys(before, after) == ("b", "c", "d")
    assert changed_keys(after, after) == ()
    assert changed_keys({}, {"new": 1}) == ("new",)


def test_changed_keys_among_a_change_sets_keys_compares_only_those() -> None:
    before = {"a": 1, "b": 2, "gone": 3, "n": None}
    after = {"a": 1, "b": 5, "new": None}
    # The change set touched b (changed), a (set to the same value), gone (unset), new
    # (added as null), n (unset), never (unset but never there).
    assert changed_keys(before, after, among=["b", "a", "gone", "new", "n", "never"]) == (
        "b", "gone", "n", "new",
    )  # fmt: skip
    assert changed_keys(before, after, among=[]) == ()


class TestLocalCopy:
    def test_round_trip_atomic_and_private(self, tmp_path: Path) -> None:
        copy = LocalCopy(tmp_path / "keel" / "config" / "billing-production.json")
        copy.write(Snapshot("billing", "production", 7, {"workers": 8}))
        copy.write(Snapshot("billing", "production", 8, {"workers": 9}))
        assert copy.read("billing", "production") == Snapshot(
            "billing", "production", 8, {"workers": 9}
        )
        assert stat.S_IMODE(copy.path.stat().st_mode) == 0o600
        assert stat.S_IMODE(copy.path.parent.stat().st_mode) == 0o700
        assert os.listdir(copy.path.parent) == ["billing-production.json"]

    @pytest.mark.parametrize(
        ("content", "reason"),
        [
            (None, "no local copy"),
            ("[1, 2", "is not JSON"),
            ("[]", "not a Keel config snapshot"),
            ('{"format": 2}', "not a Keel config snapshot"),
            ('{"format": 1, "revision": true, "values": {}}', "no valid revision"),
            ('{"format": 1, "revision": 2, "values": []}', "no valid revision"),
            (
                '{"format": 1, "application": "billing", "environment": "staging",'
                ' "revision": 2, "values": {}}',
                "holds billing/staging, not billing/production",
            ),
        ],
    )
    def test_an_unusable_file_says_why(
        self, tmp_path: Path, content: str | None, reason: str
    ) -> None:
        path = tmp_path / "copy.json"
        if content is not None:
            path.write_text(content)
        with pytest.raises(LocalCopyError, match=reason):
            LocalCopy(path).read("billing", "production")

    def test_a_failed_write_leaves_the_old_copy_and_no_temporary_file(self, tmp_path: Path) -> None:
        copy = LocalCopy(tmp_path / "copy.json")
        copy.write(Snapshot("billing", "production", 2, {"a": 1}))
        with pytest.raises(TypeError):
            copy.write(Snapshot("billing", "production", 3, {"a": object()}))
        assert json.loads(copy.path.read_text())["revision"] == 2
        assert os.listdir(tmp_path) == ["copy.json"]


def test_names_become_urls_and_file_names_only_when_valid() -> None:
    assert check_name("application", "billing-v2") == "billing-v2"
    for bad in ("", "../x", "Billing", "a/b", "x" * 64):
        with pytest.raises(ValueError, match="invalid application name"):
            check_name("application", bad)
    assert default_cache_path("billing", "prod", {"XDG_CACHE_HOME": "/var/cache"}) == Path(
        "/var/cache/keel/config/billing-prod.json"
    )
    assert default_cache_path("billing", "prod", {}).parts[-4:] == (
        ".cache", "keel", "config", "billing-prod.json",
    )  # fmt: skip


def test_the_ready_event_is_yielded_only_when_asked() -> None:
    ready = ServerSentEvent("ready", '{"position": 41}', "41")
    assert _change_of(ready) is None
    change = _change_of(ready, yield_ready=True)
    assert change is not None
    assert (change.id, change.is_ready, change.is_reset) == (41, True, False)


def test_public_api_is_exactly_the_curated_list() -> None:
    assert set(keel_client.config.__all__) == {
        "DEFAULT_START_TIMEOUT",
        "ENV_TOKEN",
        "ENV_URL",
        "ChangeCallback",
        "ConfigChange",
        "ConfigClient",
        "ConfigError",
        "ConfigNotFound",
        "ConfigPermissionDenied",
        "ConfigUnavailable",
        "KeelConfigSettingsSource",
        "Snapshot",
        "SyncConfigClient",
        "default_cache_path",
        "load_snapshot",
    }
    for name in keel_client.config.__all__:
        assert getattr(keel_client.config, name) is not None


def test_the_client_needs_neither_the_server_nor_pydantic_settings() -> None:
    code = (
        "import sys, keel_client.config;"
        "assert 'keel' not in sys.modules, 'imports the server';"
        "assert 'pydantic_settings' not in sys.modules, 'imports pydantic-settings'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
