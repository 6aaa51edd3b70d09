"""Offline checks of an audit-log export (``GET /audit/v1/export``), trusting only the log's keys.

An export is pinned to one signed tree head and carries, for every event, its leaf hash and
its inclusion proof in that head. Checking it needs no call to Keel: the head's signature
against the log's public keys (saved from ``/audit/v1/keys``), then every event against the
head. A changed, added or reordered event, a forged head or a proof from another tree is
refused with :class:`~keel_client.audit.ProofError`, naming the line.

An erased event (retention removed its document) is listed with its leaf only: its proof
still checks, its content is gone.

Example::

    from keel_client.audit import ProofError, public_keys_from_jwks, verify_export_lines

    keys = public_keys_from_jwks(json.load(open("audit-keys.json")))
    with open("audit-export.jsonl", encoding="utf-8") as lines:
        try:
            count = verify_export_lines(lines, keys)
        except ProofError as error:
            sys.exit(f"the export does not verify: {error}")

A JSON Lines export ends with ``{"end": {"events": n}}``, so a file cut short is refused; a CSV
export has no such line (its head comes in the ``Keel-Tree-Head`` response header): prefer
JSON Lines for archives.
"""

from __future__ import annotations

import csv
import hmac
import json
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from keel_client.audit._heads import (
    TreeHead,
    event_leaf_hash,
    unb64,
    verify_tree_head,
)
from keel_client.audit._merkle import HASH_SIZE, ProofError, leaf_hash, verify_inclusion

__all__ = ["CSV_COLUMNS", "flat_columns", "verify_export_csv", "verify_export_lines"]

#: The columns of a CSV export, in order.
CSV_COLUMNS = (
    "id",
    "time",
    "action",
    "outcome",
    "actor_type",
    "actor_id",
    "target_type",
    "target_id",
    "sensitivity",
    "leaf_index",
    "leaf_hash",
    "document",
    "inclusion_proof",
)
_FLAT_COLUMNS = CSV_COLUMNS[:9]


def verify_export_lines(lines: Iterable[str | bytes], keys: Mapping[str, Ed25519PublicKey]) -> int:
    """Check a JSON Lines export end to end; return the number of events it holds.

    Raises :class:`ProofError` unless the first line is a tree head signed by one of
    ``keys``, every event line is proved in that head (events in log order, each document
    hashing to its leaf), and the export ends with its ``end`` line counting them.
    """
    head: TreeHead | None = None
    count = 0
    ended = False
    previous = -1
    for number, raw in enumerate(lines, start=1):
        text = raw.decode() if isinstance(raw, bytes) else raw
        if not text.strip():
            continue
        if ended:
            raise ProofError(f"line {number}: lines after the end line")
        record = _json_object(text, number)
        if head is None:
            if set(record) != {"tree_head"} or not isinstance(record["tree_head"], Mapping):
                raise ProofError(f"line {number}: an export starts with its tree head")
            head = TreeHead.from_json(record["tree_head"])
            verify_tree_head(head, keys)
            continue
        if set(record) == {"end"}:
            end = record["end"]
            if not isinstance(end, Mapping) or end.get("events") != count:
                raise ProofError(f"line {number}: the end line does not count {count} events")
            ended = True
            continue
        previous = _check_event_line(record, head, previous, number)
        count += 1
    if head is None:
        raise ProofError("the export is empty: no tree head")
    if not ended:
        raise ProofError("the export has no end line: it was cut short")
    return count


def verify_export_csv(
    lines: Iterable[str],
    tree_head: TreeHead | Mapping[str, Any] | str,
    keys: Mapping[str, Ed25519PublicKey],
) -> int:
    """Check a CSV export against its signed head (the ``Keel-Tree-Head`` header: a
    :class:`TreeHead`, its JSON object or that JSON text); return the number of rows.

    ``lines`` as ``csv.reader`` takes them: a file opened with ``newline=""``, or
    ``io.StringIO(text)`` (a quoted value may hold a line break).

    Each row's document must hash to its leaf, its flat columns must be the document's, and
    its inclusion proof must lead to the head's root. The columns of an erased row (empty
    ``document``) are not covered by any hash.
    """
    head = _head(tree_head)
    verify_tree_head(head, keys)
    rows = csv.reader(lines)
    header = next(rows, None)
    if header is None or tuple(header) != CSV_COLUMNS:
        raise ProofError(f"the header row is not {','.join(CSV_COLUMNS)}")
    count = 0
    previous = -1
    for number, row in enumerate(rows, start=2):
        if len(row) != len(CSV_COLUMNS):
            raise ProofError(f"row {number}: {len(row)} columns, not {len(CSV_COLUMNS)}")
        values = dict(zip(CSV_COLUMNS, row, strict=True))
        text_index = values["leaf_index"]
        if not (text_index.isascii() and text_index.isdigit()):
            raise ProofError(f"row {number}: leaf_index is not a leaf index")
        index = int(text_index)
        digest = _hash(values["leaf_hash"], number, "row")
        proof = [_hash(item, number, "row") for item in values["inclusion_proof"].split()]
        if values["document"]:
            document = values["document"].encode()
            if not hmac.compare_digest(leaf_hash(document), digest):
                raise ProofError(f"row {number}: the document does not hash to its leaf")
            event = _json_object(values["document"], number, "row")
            _check_tenant(event, head, number, "row")
            for column, expected in flat_columns(event).items():
                if values[column] != expected:
                    raise ProofError(f"row {number}: {column} differs from the document")
        previous = _check_proof(index, digest, proof, head, previous, number, "row")
        count += 1
    return count


def _check_event_line(record: Mapping[str, Any], head: TreeHead, previous: int, number: int) -> int:
    expected = {"event", "leaf_index", "leaf_hash", "inclusion_proof"}
    if set(record) != expected:
        raise ProofError(f"line {number}: an event line has exactly {sorted(expected)}")
    index = _leaf_index(record["leaf_index"], number)
    digest = _hash(record["leaf_hash"], number)
    proof = record["inclusion_proof"]
    if not isinstance(proof, list):
        raise ProofError(f"line {number}: inclusion_proof is not a list")
    hashes = [_hash(item, number) for item in proof]
    event = record["event"]
    if event is not None:
        if not isinstance(event, dict):
            raise ProofError(f"line {number}: the event is not a JSON object")
        if not hmac.compare_digest(event_leaf_hash(event), digest):
            raise ProofError(f"line {number}: the event does not hash to its leaf")
        _check_tenant(event, head, number)
    return _check_proof(index, digest, hashes, head, previous, number)


def _check_proof(
    index: int,
    digest: bytes,
    proof: list[bytes],
    head: TreeHead,
    previous: int,
    number: int,
    what: str = "line",
) -> int:
    if index <= previous:
        raise ProofError(f"{what} {number}: leaf {index} is out of log order")
    try:
        verify_inclusion(digest, index, head.tree_size, proof, head.root_hash)
    except ProofError as error:
        raise ProofError(f"{what} {number}: {error}") from None
    return index


def _check_tenant(
    event: Mapping[str, Any], head: TreeHead, number: int, what: str = "line"
) -> None:
    if event.get("tenant") != head.tenant:
        raise ProofError(f"{what} {number}: the event belongs to another tenant than the head")


def flat_columns(event: Mapping[str, Any]) -> dict[str, str]:
    """The flat CSV columns of an event document (``""`` where it has no value)."""
    actor = event.get("actor") or {}
    target = event.get("target") or {}
    values = {
        "id": event.get("id"),
        "time": event.get("time"),
        "action": event.get("action"),
        "outcome": event.get("outcome"),
        "actor_type": actor.get("type"),
        "actor_id": actor.get("id"),
        "target_type": target.get("type"),
        "target_id": target.get("id"),
        "sensitivity": event.get("sensitivity"),
    }
    return {column: "" if value is None else str(value) for column, value in values.items()}


def _head(tree_head: TreeHead | Mapping[str, Any] | str) -> TreeHead:
    if isinstance(tree_head, TreeHead):
        return tree_head
    if isinstance(tree_head, str):
        try:
            tree_head = json.loads(tree_head)
        except ValueError:
            raise ProofError("the tree head is not JSON") from None
        if not isinstance(tree_head, Mapping):
            raise ProofError("the tree head is not a JSON object")
    return TreeHead.from_json(tree_head)


def _json_object(text: str, number: int, what: str = "line") -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise ProofError(f"{what} {number}: not JSON") from None
    if not isinstance(value, dict):
        raise ProofError(f"{what} {number}: not a JSON object")
    return value


def _leaf_index(value: Any, number: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProofError(f"line {number}: leaf_index is not a leaf index")
    return value


def _hash(value: Any, number: int, what: str = "line") -> bytes:
    if not isinstance(value, str):
        raise ProofError(f"{what} {number}: a hash is not base64 text")
    digest = unb64(value, f"{what} {number}: a hash")
    if len(digest) != HASH_SIZE:
        raise ProofError(f"{what} {number}: a hash is {len(digest)} bytes, not {HASH_SIZE}")
    return digest
