"""An append worked out in memory, without I/O: each new event's leaf index and the rows it
adds (event, document, the perfect-subtree nodes it completes), and the tree it leaves.

Pure functions: :mod:`keel.audit.service.log` stores what they plan, ``keel audit verify``
checks the columns :func:`event_columns` takes from a document, and the benchmarks build a
log's rows with them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keel.core.errors import Conflict
from keel_client.audit import EMPTY_ROOT, canonical_json, leaf_hash, node_hash, range_hash

#: A node of the tree: ``(level, index)``, level 0 the leaves.
Node = tuple[int, int]


@dataclass(frozen=True)
class Receipt:
    """Where an appended event is in the log: its leaf index and leaf hash."""

    event_id: str
    leaf_index: int
    leaf_hash: bytes


@dataclass(frozen=True)
class Leaf:
    """An event to append: its canonical document, its fields, and the hash a repeat of it
    must match (of the event as the appender sent it)."""

    event_id: str
    document: bytes
    fields: dict[str, Any]
    request_hash: bytes


def new_leaf(document: dict[str, Any], request_hash: bytes | None = None) -> Leaf:
    """The leaf of an event ``document``; ``request_hash`` defaults to its document's hash."""
    raw = canonical_json(document)
    return Leaf(document["id"], raw, document, request_hash or hashlib.sha256(raw).digest())


def event_columns(document: Mapping[str, Any]) -> dict[str, Any]:
    """The columns of ``audit_events`` taken from an event's document, which queries filter
    on: the sequencer stores them, ``keel audit verify`` checks them against the document."""
    actor = document.get("actor") or {}
    target = document.get("target") or {}
    return {
        "event_id": document["id"],
        "time": datetime.fromisoformat(document["time"]),
        "action": document["action"],
        "outcome": document["outcome"],
        "sensitivity": document["sensitivity"],
        "actor_type": actor.get("type"),
        "actor_id": actor.get("id"),
        "target_type": target.get("type"),
        "target_id": target.get("id"),
    }


def event_row(
    tenant_id: str, index: int, leaf: Leaf, digest: bytes, now: datetime
) -> dict[str, Any]:
    """The ``audit_events`` row of ``leaf`` at ``index``, sequenced ``now``."""
    return {
        "tenant_id": tenant_id,
        "leaf_index": index,
        **event_columns(leaf.fields),
        "leaf_hash": digest,
        "request_hash": leaf.request_hash,
        "sequenced_at": now,
    }


@dataclass(frozen=True)
class AppendPlan:
    """An append worked out in memory: the rows to insert and the tree they leave."""

    events: list[dict[str, Any]]
    payloads: list[dict[str, Any]]
    nodes: list[dict[str, Any]]
    receipts: list[Receipt]
    new_size: int
    frontier: dict[Node, bytes]
    root: bytes


def plan_append(
    tenant_id: str, size: int, known: dict[Node, bytes], leaves: list[Leaf], now: datetime
) -> AppendPlan:
    """Append ``leaves`` to a tree of ``size`` leaves whose frontier is in ``known``: each
    leaf's index, and the perfect-subtree nodes each completes."""
    nodes = dict(known)
    new_nodes: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    payloads: list[dict[str, Any]] = []
    receipts: list[Receipt] = []
    for offset, leaf in enumerate(leaves):
        index = size + offset
        digest = leaf_hash(leaf.document)
        nodes[(0, index)] = digest
        level, position, current = 0, index, digest
        while position & 1:
            current = node_hash(nodes[(level, position - 1)], current)
            level, position = level + 1, position >> 1
            nodes[(level, position)] = current
            new_nodes.append(
                {"tenant_id": tenant_id, "level": level, "index": position, "hash": current}
            )
        events.append(event_row(tenant_id, index, leaf, digest, now))
        payloads.append({"tenant_id": tenant_id, "leaf_index": index, "document": leaf.document})
        receipts.append(Receipt(leaf.event_id, index, digest))
    new_size = size + len(leaves)
    frontier = {node: nodes[node] for node in frontier_of(new_size)}
    root = tree_root(new_size, nodes)
    return AppendPlan(events, payloads, new_nodes, receipts, new_size, frontier, root)


def tree_root(size: int, frontier: Mapping[Node, bytes]) -> bytes:
    """The root of a tree of ``size`` leaves from its frontier (or any superset of it)."""
    if size == 0:
        return EMPTY_ROOT
    return range_hash(0, size, lambda level, index: frontier[(level, index)])


def fresh_leaves(leaves: list[Leaf], stored: dict[str, bytes]) -> list[Leaf]:
    """The leaves to append: not in the log (``stored``: event id → request hash of those
    that are) and each id once; an id sent again with other content is a conflict."""
    fresh: dict[str, Leaf] = {}
    for leaf in leaves:
        earlier = stored.get(leaf.event_id)
        if earlier is None and leaf.event_id not in fresh:
            fresh[leaf.event_id] = leaf
            continue
        if (earlier or fresh[leaf.event_id].request_hash) != leaf.request_hash:
            raise Conflict(f"Event {leaf.event_id!r} exists with other content.")
    return list(fresh.values())


def frontier_of(size: int) -> set[Node]:
    """The perfect subtrees a tree of ``size`` leaves is made of, left to right: its root
    combines them, and the next appended leaves combine with them."""
    return {(level, (size >> level) - 1) for level in range(size.bit_length()) if size >> level & 1}
