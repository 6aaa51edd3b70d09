"""The pure parts of ``keel_client.secrets``: references, paths, the cache, the renewal
schedule, and the curated public API."""

from __future__ import annotations

import subprocess
import sys

import pytest

import keel_client.secrets
from keel_client.secrets import SecretCache, SecretReference, parse_reference
from keel_client.secrets._cache import MISSING
from keel_client.secrets._client import check_path, env_settings
from keel_client.secrets._dynamic import renewal_delay


class TestParseReference:
    def test_path_and_key(self) -> None:
        assert parse_reference("apps/billing/db#password") == SecretReference(
            "secret", "apps/billing/db", "password"
        )

    def test_without_a_key_the_whole_secret(self) -> None:
        reference = parse_reference("/apps/billing/db/", mount="team-kv")
        assert reference == SecretReference("team-kv", "apps/billing/db", None)
        assert str(reference) == "team-kv/apps/billing/db"

    @pytest.mark.parametrize("bad", ["", "#key", "apps/db#", "apps/../sys#k", "a//b"])
    def test_bad_references_are_refused(self, bad: str) -> None:
        with pytest.raises(ValueError, match="secret"):
            parse_reference(bad)

    def test_a_bad_mount_is_refused(self) -> None:
        with pytest.raises(ValueError, match="invalid mount"):
            parse_reference("apps/db#k", mount="Sys/Mounts")


def test_dot_segments_never_reach_a_url() -> None:
    for path in ("..", "apps/..", "apps/./db"):
        with pytest.raises(ValueError, match=r"'\.' or '\.\.'"):
            check_path(path)
    assert check_path("apps/billing.db") == "apps/billing.db"


def test_env_settings_need_keel_url_and_keep_the_token_secret() -> None:
    url, token = env_settings({"KEEL_URL": "https://keel.internal", "KEEL_TOKEN": "keel_x"})
    assert url == "https://keel.internal"
    assert token is not None
    assert token.get_secret_value() == "keel_x"
    assert "keel_x" not in repr(token)
    assert env_settings({"KEEL_URL": "https://keel.internal"})[1] is None
    with pytest.raises(ValueError, match="KEEL_URL is not set"):
        env_settings({"KEEL_TOKEN": "keel_x"})


class TestSecretCache:
    def make(self, ttl: float = 5.0, size: int = 3) -> tuple[SecretCache, list[float]]:
        now = [0.0]
        return SecretCache(ttl=ttl, max_entries=size, clock=lambda: now[0]), now

    def test_expires_after_ttl(self) -> None:
        cache, now = self.make()
        cache.put(("secret", "a"), {"k": "v"}, epoch=cache.epoch)
        now[0] = 4.99
        assert cache.get(("secret", "a")) == {"k": "v"}
        assert cache.get_value(("secret", "a"), "k") == (True, "v")
        assert cache.get_value(("secret", "a"), "other") == (True, MISSING)
        now[0] = 5.0
        assert cache.get(("secret", "a")) is None
        assert cache.get_value(("secret", "a"), "k") == (False, None)
        assert len(cache) == 0

    def test_least_recently_used_goes_first(self) -> None:
        cache, _ = self.make(size=2)
        cache.put(("secret", "a"), {}, epoch=cache.epoch)
        cache.put(("secret", "b"), {}, epoch=cache.epoch)
        cache.get(("secret", "a"))
        cache.put(("secret", "c"), {}, epoch=cache.epoch)
        assert cache.get(("secret", "b")) is None
        assert cache.get(("secret", "a")) == {}

    def test_a_read_begun_before_an_invalidation_is_not_cached(self) -> None:
        cache, _ = self.make()
        epoch = cache.epoch
        cache.invalidate(("secret", "a"))  # a write landed while the read was in flight
        cache.put(("secret", "a"), {"k": "old"}, epoch=epoch)
        assert cache.get(("secret", "a")) is None

    def test_zero_ttl_caches_nothing(self) -> None:
        cache, _ = self.make(ttl=0)
        cache.put(("secret", "a"), {"k": "v"}, epoch=cache.epoch)
        assert cache.get(("secret", "a")) is None
        assert not cache.is_enabled

    def test_bad_bounds_are_refused(self) -> None:
        with pytest.raises(ValueError, match="cache_ttl"):
            SecretCache(ttl=-1, max_entries=1)
        with pytest.raises(ValueError, match="cache_size"):
            SecretCache(ttl=1, max_entries=0)


def test_renewal_comes_at_two_thirds_of_the_ttl() -> None:
    assert renewal_delay(3600) == pytest.approx(2400)
    assert renewal_delay(3) == pytest.approx(2)
    assert renewal_delay(0) == 0


def test_public_api_is_exactly_the_curated_list() -> None:
    assert set(keel_client.secrets.__all__) == {
        "DEFAULT_CACHE_SIZE",
        "DEFAULT_CACHE_TTL",
        "DEFAULT_MOUNT",
        "ENV_TOKEN",
        "ENV_URL",
        "CheckAndSetConflict",
        "DynamicCredential",
        "KeelSecretsSettingsSource",
        "SecretCache",
        "SecretNotFound",
        "SecretPermissionDenied",
        "SecretRef",
        "SecretReference",
        "SecretSettingsError",
        "SecretsClient",
        "SecretsError",
        "SyncSecretsClient",
        "parse_reference",
    }
    for name in keel_client.secrets.__all__:
        assert getattr(keel_client.secrets, name) is not None


def test_the_client_needs_neither_the_server_nor_pydantic_settings() -> None:
    code = (
        "import sys, keel_client.secrets;"
        "assert 'keel' not in sys.modules, 'imports the server';"
        "assert 'pydantic_settings' not in sys.modules, 'imports pydantic-settings'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
