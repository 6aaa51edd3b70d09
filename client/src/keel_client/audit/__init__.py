"""Keel's audit log from a service: record events, check proofs, ``keel_client.audit``.

Record events durably (spooled, sent in the background)::

    from keel_client.audit import AuditClient, EventActor, EventTarget

    async with AuditClient.from_env(spool_dir="/var/spool/billing-audit") as audit:
        audit.record("billing.invoice.refund", actor=EventActor("user", "u-42"),
                     target=EventTarget("invoice", "in_1001"))

Check that the log holds an event, trusting only its keys::

    from keel_client.audit import ProofError, leaf_hash, verify_inclusion

    try:
        verify_inclusion(leaf_hash(event_bytes), receipt.index, receipt.size, receipt.proof, root)
    except ProofError:
        ...  # the log cannot prove it holds this event

Private modules by concept, behind this curated list: ``_vocabulary`` (outcomes, sensitivities,
name patterns and field limits Keel and the SDK share), ``_transactions`` (the checks on a
financial transaction), ``_events`` (events built and checked), ``_merkle`` (RFC 6962 trees and
proofs), ``_heads`` (canonical bytes, signed tree heads), ``_export`` (offline export checks),
``_api`` (``AuditAPI``: one HTTP call each), ``_spool`` (the write-ahead journal),
``_policy`` (what the sender does after a failure), ``_client`` (``AuditClient``),
``_sync_client`` (``SyncAuditClient``) and ``_logging`` (``AuditForwarder``).

The pure pieces are imported with the package, for the Keel server among others; the names
that bring an HTTP stack (the clients, the API, the spool) are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keel_client._lazy import lazy_names
from keel_client.audit._events import (
    EventActor,
    EventFields,
    EventTarget,
    TransactionFields,
    build_event,
    build_transaction,
    encode_event,
    new_event_id,
)
from keel_client.audit._export import (
    CSV_COLUMNS,
    flat_columns,
    verify_export_csv,
    verify_export_lines,
)
from keel_client.audit._heads import (
    TreeHead,
    canonical_json,
    event_document,
    event_leaf_hash,
    public_keys_from_jwks,
    tree_head_message,
    verify_event_receipt,
    verify_tree_head,
)
from keel_client.audit._merkle import (
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
from keel_client.audit._transactions import (
    AMOUNT_PATTERN,
    CURRENCY_PATTERN,
    MAX_AMOUNT_DIGITS,
    MAX_AUTHORISERS,
    TRANSACTION_EVENT_PREFIX,
    TRANSACTION_FIELD_LIMITS,
    TRANSACTION_ID_PATTERN,
    check_amount,
    check_authorising_chain,
    check_transaction_id,
    check_transaction_text,
    currency_minor_units,
)
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

if TYPE_CHECKING:
    from keel_client.audit._api import (
        AuditAPI,
        BatchReceipts,
        EventPage,
        EventReceipt,
        TransactionReceipt,
    )
    from keel_client.audit._client import AuditClient, AuditClientStats, AuditRecorder
    from keel_client.audit._logging import AuditForwarder, event_fields
    from keel_client.audit._policy import FailureStep, RejectedEvent, failure_step, retry_delay
    from keel_client.audit._spool import (
        AuditSpool,
        SpoolError,
        SpoolFullError,
        SpoolLockedError,
    )
    from keel_client.audit._sync_client import SyncAuditClient

#: The names that bring an HTTP stack (httpx, pydantic), imported on first use: a process
#: verifying proofs or checking events, the Keel server among them, does without.
__getattr__ = lazy_names(
    __name__,
    {
        "_api": {"AuditAPI", "BatchReceipts", "EventPage", "EventReceipt", "TransactionReceipt"},
        "_client": {"AuditClient", "AuditClientStats", "AuditRecorder"},
        "_logging": {"AuditForwarder", "event_fields"},
        "_policy": {"FailureStep", "RejectedEvent", "failure_step", "retry_delay"},
        "_spool": {"AuditSpool", "SpoolError", "SpoolFullError", "SpoolLockedError"},
        "_sync_client": {"SyncAuditClient"},
    },
)

__all__ = [
    "ACTION_PATTERN",
    "AMOUNT_PATTERN",
    "CSV_COLUMNS",
    "CURRENCY_PATTERN",
    "EMPTY_ROOT",
    "EVENT_ID_PATTERN",
    "FIELD_LIMITS",
    "HASH_SIZE",
    "MAX_AMOUNT_DIGITS",
    "MAX_AUTHORISERS",
    "MAX_BATCH_SIZE",
    "MAX_DATA_DEPTH",
    "MAX_SAFE_INTEGER",
    "TRANSACTION_EVENT_PREFIX",
    "TRANSACTION_FIELD_LIMITS",
    "TRANSACTION_ID_PATTERN",
    "AuditAPI",
    "AuditClient",
    "AuditClientStats",
    "AuditForwarder",
    "AuditRecorder",
    "AuditSpool",
    "BatchReceipts",
    "EventActor",
    "EventFields",
    "EventPage",
    "EventReceipt",
    "EventTarget",
    "FailureStep",
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
    "TransactionFields",
    "TransactionReceipt",
    "TreeHead",
    "appended_nodes",
    "build_event",
    "build_transaction",
    "canonical_json",
    "check_amount",
    "check_authorising_chain",
    "check_transaction_id",
    "check_transaction_text",
    "consistency_path",
    "currency_minor_units",
    "encode_event",
    "event_document",
    "event_fields",
    "event_leaf_hash",
    "failure_step",
    "flat_columns",
    "inclusion_path",
    "leaf_hash",
    "new_event_id",
    "node_hash",
    "nodes_for_ranges",
    "perfect_ranges",
    "public_keys_from_jwks",
    "range_hash",
    "retry_delay",
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
