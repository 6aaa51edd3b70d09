"""The worker runs the service's task for a job the app enqueued; its cron schedule is in
Keel from keel.toml, and the service's own key cannot change it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from {{ cookiecutter.package_name }}.worker import BUILD_REPORT, NIGHTLY_CRON, NIGHTLY_REPORT, QUEUE


@pytest.fixture
def worker(src_env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m {{ cookiecutter.package_name }}.worker``, as ``make worker`` runs it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}.worker"], env=src_env
    )
    try:
        yield process
    finally:
        process.terminate()  # SIGTERM: a graceful stop
        process.wait(timeout=60)


def test_a_report_requested_is_built_by_the_worker(
    client: TestClient,
    caller: dict[str, str],
    admin: httpx.Client,
    worker: subprocess.Popen[bytes],
    eventually: Callable[..., Any],
) -> None:
    answer = client.post("/reports", json={"day": "2026-12-06"}, headers=caller)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["job_id"]

    def completed() -> dict[str, Any] | None:
        """the report's job completed"""
        assert worker.poll() is None, "the worker exited"
        job = admin.get(f"/jobs/v1/jobs/{job_id}").json()
        return job if job["state"] == "completed" else None

    job = eventually(completed)
    assert job["queue"] == QUEUE
    assert job["result"] == {"day": "2026-12-06", "status": "built"}


def test_the_nightly_schedule_is_in_keel_and_the_service_cannot_change_it(
    admin: httpx.Client, keel_server: Any
) -> None:
    schedule = admin.get(f"/jobs/v1/schedules/{NIGHTLY_REPORT}")
    assert schedule.status_code == 200, schedule.text
    held = schedule.json()
    assert (held["cron"], held["timezone"]) == (NIGHTLY_CRON, "UTC")
    assert (held["queue"], held["task"], held["enabled"]) == (QUEUE, BUILD_REPORT, True)
    assert held["next_run_at"] is not None

    # keel apply put it there: the service's role holds enqueue and work, not admin.
    with httpx.Client(
        base_url=keel_server.url,
        headers={"Authorization": f"Bearer {keel_server.service_token}"},
        timeout=30.0,
    ) as service:
        changed = service.put(
            f"/jobs/v1/schedules/{NIGHTLY_REPORT}",
            json={"cron": "* * * * *", "queue": QUEUE, "task": BUILD_REPORT},
        )
    assert changed.status_code == 403, changed.text
    assert admin.get(f"/jobs/v1/schedules/{NIGHTLY_REPORT}").json()["cron"] == NIGHTLY_CRON
