"""Audit-log proofs: RFC 6962 Merkle trees, ``keel_client.audit``.

Example::

    from keel_client.audit import ProofError, leaf_hash, verify_inclusion

    try:
        verify_inclusion(leaf_hash(event_bytes), receipt.index, receipt.size, receipt.proof, root)
    except ProofError:
        ...  # the log cannot prove it holds this event

The same module builds proofs from stored perfect-subtree hashes, for the Keel audit service,
and holds ``MerkleTree``, an in-memory tree for tests and third parties.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keel_client._lazy import lazy_names
from keel_client.audit._vocabulary import (
    ACTION_PATTERN,
    EVENT_ID_PATTERN,
    FIELD_LIMITS,
    MAX_BATCH_SIZE,
    MAX_DATA_DEPTH,
    MAX_SAFE_INTEGER,
    Outcome,
    Sensitivity,
)
from keel_client.audit.export import verify_export_csv, verify_export_lines
from keel_client.audit.heads import (
    TreeHead,
    canonical_json,
    event_document,
    event_leaf_hash,
    public_keys_from_jwks,
    tree_head_message,
    verify_event_receipt,
    verify_tree_head,
)
from keel_client.audit.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    MerkleTree,
    NodeLookup,
    ProofError,
    Range,
    appended_nodes,
    consistency_path,
    inclusion_path,
    leaf_hash,
    node_hash,
    nodes_for_ranges,
    perfect_ranges,
    range_hash,
    root_from_inclusion,
    root_hash,
    verify_consistency,
    verify_inclusion,
)

if TYPE_CHECKING:
    from keel_client.audit.client import (
        AuditAPI,
        AuditClient,
        AuditClientStats,
        AuditSpool,
        EventActor,
        EventTarget,
        RejectedEvent,
        SpoolError,
        SpoolFullError,
        SpoolLockedError,
        SyncAuditClient,
    )

#: The audit client's names, imported on first use: the client brings an HTTP stack that a
#: process verifying proofs, the Keel server among them, does without.
__getattr__ = lazy_names(
    __name__,
    {
        "client": {
            "AuditAPI",
            "AuditClient",
            "AuditClientStats",
            "AuditSpool",
            "EventActor",
            "EventTarget",
            "RejectedEvent",
            "SpoolError",
            "SpoolFullError",
            "SpoolLockedError",
            "SyncAuditClient",
        },
    },
)

__all__ = [
    "ACTION_PATTERN",
    "EMPTY_ROOT",
    "EVENT_ID_PATTERN",
    "FIELD_LIMITS",
    "HASH_SIZE",
    "MAX_BATCH_SIZE",
    "MAX_DATA_DEPTH",
    "MAX_SAFE_INTEGER",
    "AuditAPI",
    "AuditClient",
    "AuditClientStats",
    "AuditSpool",
    "EventActor",
    "EventTarget",
    "MerkleTree",
    "NodeLookup",
    "Outcome",
    "ProofError",
    "Range",
    "RejectedEvent",
    "Sensitivity",
    "SpoolError",
    "SpoolFullError",
    "SpoolLockedError",
    "SyncAuditClient",
    "TreeHead",
    "appended_nodes",
    "canonical_json",
    "consistency_path",
    "event_document",
    "event_leaf_hash",
    "inclusion_path",
    "leaf_hash",
    "node_hash",
    "nodes_for_ranges",
    "perfect_ranges",
    "public_keys_from_jwks",
    "range_hash",
    "root_from_inclusion",
    "root_hash",
    "tree_head_message",
    "verify_consistency",
    "verify_event_receipt",
    "verify_export_csv",
    "verify_export_lines",
    "verify_inclusion",
    "verify_tree_head",
]
