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

__all__ = [
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
]
