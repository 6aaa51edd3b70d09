"""The last known good policy on disk: saved atomically for its owner only, loaded back as
the same snapshot, and ignored (never half used) when missing, corrupt, of another tenant or
no longer valid."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime
from pathlib import Path

from keel.gateway.service import (
    PolicySnapshot,
    load_last_known_good,
    save_last_known_good,
)
from keel_client.edge._model import EdgePolicy

POLICY = EdgePolicy.model_validate(
    {
        "upstreams": [{"name": "orders", "targets": [{"url": "http://192.0.2.10:8080"}]}],
        "routes": [
            {
                "name": "orders",
                "path": "/orders",
                "upstream": "orders",
                "request_headers": {"set": {"authorization": "Bearer upstream-secret"}},
            }
        ],
    }
)
SNAPSHOT = PolicySnapshot(7, POLICY, datetime(2026, 12, 6, 17, 0, tzinfo=UTC))


def test_a_saved_policy_loads_back_and_only_its_owner_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "gateway-policy.json"
    save_last_known_good(path, "default", SNAPSHOT)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [entry.name for entry in path.parent.iterdir()] == ["gateway-policy.json"]
    assert load_last_known_good(path, "default") == SNAPSHOT

    newer = PolicySnapshot(8, EdgePolicy(), None)
    save_last_known_good(path, "default", newer)
    assert load_last_known_good(path, "default") == newer


def test_a_missing_corrupt_foreign_or_invalid_file_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "gateway-policy.json"
    assert load_last_known_good(path, "default") is None
    path.write_text("{half a pol")
    assert load_last_known_good(path, "default") is None

    save_last_known_good(path, "default", SNAPSHOT)
    assert load_last_known_good(path, "edge") is None

    document = json.loads(path.read_text())
    document["policy"]["routes"][0]["upstream"] = "missing"  # fails the cross-checks
    path.write_text(json.dumps(document))
    assert load_last_known_good(path, "default") is None
