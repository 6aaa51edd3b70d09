"""Documents go to Keel's storage and come back byte for byte."""

from __future__ import annotations

import hashlib

from fastapi.testclient import TestClient


def test_a_document_round_trips_through_keel(client: TestClient, caller: dict[str, str]) -> None:
    content = b"invoice 42\n" * 1000
    stored = client.put(
        "/documents/invoice-42.txt",
        content=content,
        headers={**caller, "Content-Type": "text/plain"},
    )
    assert stored.status_code == 201, stored.text
    assert stored.json()["sha256"] == hashlib.sha256(content).hexdigest()
    assert stored.json()["content_type"] == "text/plain"

    read = client.get("/documents/invoice-42.txt", headers=caller)
    assert read.status_code == 200
    assert read.content == content
