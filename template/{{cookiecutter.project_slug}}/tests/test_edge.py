"""The gateway's routes for this service (keel.toml's [[routes]]), enforced in the process:
the quotes' rate limit is counted in Keel."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_quotes_are_rate_limited_at_the_edge(
    client: TestClient, service_caller: dict[str, str]
) -> None:
    # The service account's own key: a caller no other test spends the quota of.
    statuses = [
        client.get("/quotes", params={"amount": "10.00"}, headers=service_caller).status_code
        for _ in range(6)
    ]
    assert statuses == [200] * 5 + [429]
{%- if cookiecutter.use_auth %}


def test_the_edge_refuses_an_anonymous_caller(client: TestClient) -> None:
    answer = client.get("/quotes", params={"amount": "10.00"})
    assert answer.status_code == 401
    assert answer.headers["content-type"].startswith("application/problem+json")
{%- endif %}
