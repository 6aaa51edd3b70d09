"""Verifying an event exactly as the audit API lists it, and the SDK's ``from_env`` faces.

``GET /audit/v1/events`` answers each stored document with ``leaf_index`` and ``leaf_hash``
added; ``verify_event_receipt`` takes such an event unchanged (it used to hash those fields
too, and answered "the proof leads to another root").
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from keel_client.audit import (
    AuditAPI,
    AuditClient,
    Outcome,
    ProofError,
    Sensitivity,
    TreeHead,
    build_event,
    event_document,
    event_leaf_hash,
    public_keys_from_jwks,
    verify_event_receipt,
)
from keel_client.http import BearerToken
from tests.support.tenants import TenantAdmin

ACTION = "rcpt.widget.created"


@pytest.fixture
async def api(app: FastAPI, admin: TenantAdmin) -> AsyncIterator[AuditAPI]:
    async with AuditAPI(
        "http://keel.test",
        auth=BearerToken(admin.api_key),
        transport=httpx.ASGITransport(app=app),
    ) as client:
        await client.register_action(ACTION, description="A widget was made")
        yield client


async def listed_with_proof(
    api: AuditAPI, event_id: str
) -> tuple[dict[str, Any], list[bytes], TreeHead, dict[str, Any]]:
    """The event as ``GET /audit/v1/events`` lists it, its inclusion proof in the latest
    signed head, that head, and the log's keys."""
    page = await api.list_events(action="rcpt.")
    (listed,) = [item for item in page.items if item["id"] == event_id]
    proof = (await api.get("/audit/v1/proofs/inclusion", params={"event_id": event_id})).json()
    keys = public_keys_from_jwks((await api.get("/audit/v1/keys")).json())
    head = TreeHead.from_json(proof["tree_head"])
    return listed, [base64.b64decode(p) for p in proof["proof"]], head, keys


async def test_an_event_as_the_listing_returns_it_verifies_unchanged(api: AuditAPI) -> None:
    events = [build_event(ACTION, outcome=Outcome.SUCCESS, data={"n": n}) for n in range(5)]
    receipts = await api.send_events(events)
    event_id = events[3]["id"]

    listed, proof, head, keys = await listed_with_proof(api, event_id)

    assert {"leaf_index", "leaf_hash"} <= listed.keys()  # what the listing adds
    verify_event_receipt(listed, listed["leaf_index"], proof, head, keys)
    assert listed["leaf_index"] == receipts.receipts[3].leaf_index
    # The listing's additions are not hashed: the document alone is the leaf.
    document = event_document(listed)
    assert document.keys().isdisjoint({"leaf_index", "leaf_hash"})
    assert base64.b64encode(event_leaf_hash(document)).decode() == listed["leaf_hash"]
    verify_event_receipt(document, listed["leaf_index"], proof, head, keys)
    # ``GET /audit/v1/events/{id}`` answers the same shape.
    single = (await api.get(f"/audit/v1/events/{event_id}")).json()
    verify_event_receipt(single, single["leaf_index"], proof, head, keys)


async def test_a_listed_event_still_fails_when_anything_of_it_was_changed(
    api: AuditAPI,
) -> None:
    event = build_event(ACTION, data={"amount": "12.00"})
    await api.send_events([event])
    listed, proof, head, keys = await listed_with_proof(api, event["id"])
    index = listed["leaf_index"]

    forged = {**listed, "data": {"amount": "99.00"}}
    with pytest.raises(ProofError, match="does not hash to its leaf_hash"):
        verify_event_receipt(forged, index, proof, head, keys)
    # The document changed and its leaf_hash made to match: the proof leads elsewhere.
    forged["leaf_hash"] = base64.b64encode(event_leaf_hash(event_document(forged))).decode()
    with pytest.raises(ProofError):
        verify_event_receipt(forged, index, proof, head, keys)
    # Listed at one leaf, claimed at another.
    with pytest.raises(ProofError, match="listed at leaf"):
        verify_event_receipt(listed, index + 1, proof, head, keys)
    # A field added next to the document is hashed, not ignored.
    with pytest.raises(ProofError):
        verify_event_receipt({**listed, "note": "added"}, index, proof, head, keys)


def test_an_erased_event_has_no_document_to_verify() -> None:
    erased = {
        "id": "e-1",
        "action": ACTION,
        "leaf_index": 4,
        "leaf_hash": base64.b64encode(b"\x00" * 32).decode(),
        "erased": True,
    }
    with pytest.raises(ProofError, match="erased by retention"):
        event_document(erased)


async def test_from_env_reads_keel_url_and_keel_token(
    keel_url: str, admin: TenantAdmin, tmp_path: Path
) -> None:
    environ = {"KEEL_URL": keel_url, "KEEL_TOKEN": admin.api_key}
    async with AuditAPI.from_env(environ) as api:
        await api.register_action(
            ACTION, description="A widget was made", sensitivity=Sensitivity.PUBLIC
        )
        async with AuditClient.from_env(spool_dir=tmp_path, environ=environ) as audit:
            event_id = audit.record(ACTION, outcome=Outcome.DENIED)
            assert await audit.flush(timeout=10.0)
            assert audit.stats().delivered == 1
        stored = (await api.get(f"/audit/v1/events/{event_id}")).json()
        assert (stored["id"], stored["outcome"]) == (event_id, "denied")
    with pytest.raises(ValueError, match="KEEL_URL"):
        AuditAPI.from_env({})
    with pytest.raises(ValueError, match="KEEL_URL"):
        AuditClient.from_env(spool_dir=tmp_path, environ={"KEEL_TOKEN": "keel_x"})
