"""``keel_client.audit``'s public names: exactly the curated list, and the pure ones cheap."""

import subprocess
import sys

import pytest

import keel_client.audit

#: Importable with the package, without an HTTP stack: what the Keel server uses.
PURE_NAMES = {
    # the vocabulary Keel and the SDK share
    "ACTION_PATTERN",
    "EVENT_ID_PATTERN",
    "FIELD_LIMITS",
    "MAX_BATCH_SIZE",
    "MAX_DATA_DEPTH",
    "MAX_SAFE_INTEGER",
    "Outcome",
    "Sensitivity",
    # financial transactions
    "AMOUNT_PATTERN",
    "CURRENCY_PATTERN",
    "MAX_AMOUNT_DIGITS",
    "MAX_AUTHORISERS",
    "TRANSACTION_EVENT_PREFIX",
    "TRANSACTION_FIELD_LIMITS",
    "TRANSACTION_ID_PATTERN",
    "check_amount",
    "check_authorising_chain",
    "check_transaction_id",
    "check_transaction_text",
    "currency_minor_units",
    # events
    "EventActor",
    "EventFields",
    "EventTarget",
    "TransactionFields",
    "build_event",
    "build_transaction",
    "encode_event",
    "new_event_id",
    # Merkle trees and proofs
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MerkleTree",
    "NodeLookup",
    "ProofError",
    "Range",
    "appended_nodes",
    "consistency_path",
    "inclusion_path",
    "leaf_hash",
    "node_hash",
    "nodes_for_ranges",
    "perfect_ranges",
    "range_hash",
    "root_from_inclusion",
    "root_hash",
    "verify_consistency",
    "verify_inclusion",
    # canonical bytes, signed heads, exports
    "CSV_COLUMNS",
    "TreeHead",
    "canonical_json",
    "event_document",
    "event_leaf_hash",
    "flat_columns",
    "public_keys_from_jwks",
    "tree_head_message",
    "verify_event_receipt",
    "verify_export_csv",
    "verify_export_lines",
    "verify_tree_head",
}

#: Imported on first use: they bring httpx and pydantic.
CLIENT_NAMES = {
    "AuditAPI",
    "AuditClient",
    "AuditClientStats",
    "AuditForwarder",
    "AuditRecorder",
    "AuditSpool",
    "BatchReceipts",
    "EventPage",
    "EventReceipt",
    "FailureStep",
    "RejectedEvent",
    "SpoolError",
    "SpoolFullError",
    "SpoolLockedError",
    "SyncAuditClient",
    "TransactionReceipt",
    "event_fields",
    "failure_step",
    "retry_delay",
}


def test_public_api_is_exactly_the_curated_list() -> None:
    assert set(keel_client.audit.__all__) == PURE_NAMES | CLIENT_NAMES
    assert len(keel_client.audit.__all__) == len(PURE_NAMES | CLIENT_NAMES)
    for name in keel_client.audit.__all__:
        assert getattr(keel_client.audit, name) is not None
        assert not name.startswith("_")


def test_every_public_module_is_private() -> None:
    """No ``keel_client.audit.client``-style module path to depend on: the package is the API."""
    import pkgutil

    modules = [info.name for info in pkgutil.iter_modules(keel_client.audit.__path__)]
    assert modules
    assert all(name.startswith("_") for name in modules), modules


def test_importing_the_package_brings_no_http_stack() -> None:
    code = (
        "import sys, keel_client.audit as audit;"
        f"names = {sorted(PURE_NAMES)!r};"
        "[getattr(audit, name) for name in names];"
        "print(sorted(m for m in ('httpx', 'pydantic', 'keel_client.http') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="AuditClientt"):
        keel_client.audit.AuditClientt  # noqa: B018
