"""``keel serve`` end to end: a real subprocess on a free port, on SQLite and on PostgreSQL+Redis.

What an operator sees: readiness, valid Prometheus text, problem+json on every error path
and never a stack trace, and readiness that follows a dependency's outage and recovery.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from keel.core.errors import PROBLEM_CONTENT_TYPE
from keel.migrations import head_revision
from tests.support.keel_cli import invoke_keel
from tests.support.keel_process import KeelServer, free_port, keel_env, keel_server
from tests.support.tcpproxy import threaded_tcp_proxy

POOL_GAUGES = ("size", "checked_out", "overflow", "checked_in")


@pytest.fixture(scope="module")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeelServer]:
    """One ``keel serve`` on the embedded default for the whole module."""
    cwd = tmp_path_factory.mktemp("embedded")
    with keel_server(cwd, keel_env(KEEL_LOG_FORMAT="json")) as server:
        yield server


def metric_samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples by name, from Prometheus text that must parse."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def assert_metrics_are_valid_prometheus_text(http: httpx.Client) -> None:
    http.get("/health/ready")
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = metric_samples(response.text)
    requests = samples["keel_http_requests_total"]
    assert any(
        labels == {"route": "/health/ready", "method": "GET", "status": "200"} and value >= 1
        for labels, value in requests
    ), requests
    assert "keel_http_request_duration_seconds_bucket" in samples
    for gauge in POOL_GAUGES:
        assert f"keel_db_pool_{gauge}" in samples, sorted(samples)
    assert samples["keel_health_check_up"]


def assert_error_paths_answer_problem_json(http: httpx.Client) -> None:
    unknown = http.get("/no/such/path", headers={"X-Request-ID": "serve-404"})
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert unknown.json()["type"] == "urn:keel:problem:not-found"
    assert unknown.json()["request_id"] == "serve-404"

    for path in ("/health/ready", "/no/such/path"):
        malformed = http.post(
            path, content=b'{"unterminated": ', headers={"content-type": "application/json"}
        )
        assert 400 <= malformed.status_code < 500
        assert malformed.headers["content-type"] == PROBLEM_CONTENT_TYPE
        assert malformed.json()["status"] == malformed.status_code

    oversized = http.post("/health/ready", content=b"x" * 1_100_000)
    assert oversized.status_code == 413
    assert oversized.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert oversized.json()["type"] == "urn:keel:problem:payload-too-large"


def test_ready_answers_200_on_the_embedded_default(embedded_server: KeelServer) -> None:
    with embedded_server.client() as http:
        response = http.get("/health/ready")
        assert response.status_code == 200
        assert response.json()["checks"]["database"]["status"] == "pass"
        assert http.get("/health/live").status_code == 200
        assert http.get("/health/startup").status_code == 200


def test_serve_migrates_the_embedded_default_by_itself(embedded_server: KeelServer) -> None:
    database = embedded_server.stderr_path.parent / ".keel" / "keel.db"
    with sqlite3.connect(database) as connection:
        (revision,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        connection.execute("SELECT count(*) FROM tenants").fetchone()
    assert revision == head_revision()


def test_metrics_are_valid_prometheus_text(embedded_server: KeelServer) -> None:
    with embedded_server.client() as http:
        assert_metrics_are_valid_prometheus_text(http)


def test_error_paths_answer_problem_json(embedded_server: KeelServer) -> None:
    with embedded_server.client() as http:
        assert_error_paths_answer_problem_json(http)


def test_bad_requests_never_log_a_traceback(embedded_server: KeelServer) -> None:
    with embedded_server.client() as http:
        assert_error_paths_answer_problem_json(http)
        http.get("/metrics")
    assert "http.request" in embedded_server.stderr()
    assert "Traceback" not in embedded_server.stderr()


def test_serve_on_postgres_and_redis_follows_their_outages(
    empty_postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    database = make_url(empty_postgres_url)
    redis = httpx.URL(redis_url)
    with (
        threaded_tcp_proxy(database.host or "127.0.0.1", database.port or 5432) as pg_proxy,
        threaded_tcp_proxy(redis.host, redis.port or 6379) as redis_proxy,
    ):
        env = keel_env(
            KEEL_DATABASE_URL=database.set(host="127.0.0.1", port=pg_proxy.port).render_as_string(
                hide_password=False
            ),
            KEEL_REDIS_URL=str(redis.copy_with(host="127.0.0.1", port=redis_proxy.port)),
            KEEL_LOG_FORMAT="json",
        )
        migrated = invoke_keel("migrate", cwd=tmp_path, env=env)
        assert migrated.returncode == 0, migrated.stderr

        with keel_server(tmp_path, env) as server, server.client() as http:
            ready = http.get("/health/ready").json()
            assert ready["checks"]["database"]["status"] == "pass"
            assert ready["checks"]["redis"]["status"] == "pass"
            assert not (tmp_path / ".keel").exists(), "PostgreSQL mode must not create SQLite"
            assert_metrics_are_valid_prometheus_text(http)
            assert_error_paths_answer_problem_json(http)

            for proxy, name in ((pg_proxy, "database"), (redis_proxy, "redis")):
                proxy.cut()
                down = http.get("/health/ready")
                assert down.status_code == 503
                assert down.headers["content-type"] == PROBLEM_CONTENT_TYPE
                assert name in down.json()["detail"]
                assert down.json()["checks"][name]["status"] == "fail"
                proxy.restore()
                assert http.get("/health/ready").status_code == 200

            assert "Traceback" not in server.stderr()
        assert not any(path.name == "keel.db" for path in tmp_path.rglob("*"))


@pytest.mark.parametrize("outage", ["refused", "silent"])
def test_serve_against_an_unreachable_postgres_says_so_in_a_line_within_seconds(
    outage: str, tmp_path: Path
) -> None:
    """Refused, or accepted and never answered (a partition, a hung server): one line
    naming the database, exit code 1, no traceback, within the connect timeout's order (it
    took the 10 s of the pool timeout, and more, when a silent server was waited for)."""
    with threaded_tcp_proxy("127.0.0.1", free_port()) as silent:
        silent.blackhole()
        port = silent.port if outage == "silent" else free_port()
        env = keel_env(
            KEEL_DATABASE_URL=f"postgresql://keel@127.0.0.1:{port}/keel",
            # The default (the suite's own is longer, for its loaded machine).
            KEEL_DATABASE_POOL__CONNECT_TIMEOUT_SECONDS="2",
        )
        started = time.monotonic()
        served = invoke_keel("serve", "--port", str(free_port()), cwd=tmp_path, env=env)
        elapsed = time.monotonic() - started
    assert served.returncode == 1, served.stderr
    assert "database is unavailable" in served.stderr
    assert ("connection refused" if outage == "refused" else "no answer in time") in served.stderr
    assert "Traceback" not in served.stderr
    assert elapsed < 8.0
