"""Callers are authenticated by Keel and need the service's own permission to write."""

from __future__ import annotations

from fastapi.testclient import TestClient

ORDER = {"customer": "c-2", "amount": "3.00", "currency": "EUR"}


def test_an_anonymous_caller_is_refused_with_a_problem(client: TestClient) -> None:
    answer = client.post("/orders", json=ORDER)
    assert answer.status_code == 401
    assert answer.headers["content-type"].startswith("application/problem+json")


def test_a_caller_without_the_permission_is_forbidden(
    client: TestClient, service_caller: dict[str, str]
) -> None:
    # The service account's key is authenticated but lacks {{ cookiecutter.project_slug }}:orders:write.
    answer = client.post("/orders", json=ORDER, headers=service_caller)
    assert answer.status_code == 403
    assert "{{ cookiecutter.project_slug }}:orders:write" in answer.json()["detail"]


def test_a_caller_with_the_permission_places_an_order(
    client: TestClient, caller: dict[str, str]
) -> None:
    assert client.post("/orders", json=ORDER, headers=caller).status_code == 201


def test_a_forged_token_is_refused(client: TestClient) -> None:
    forged = {"Authorization": "Bearer keel_not-a-real-key"}
    answer = client.post("/orders", json=ORDER, headers=forged)
    assert answer.status_code == 401
