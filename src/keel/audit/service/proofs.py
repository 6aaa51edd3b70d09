"""Inclusion and consistency proofs (RFC 6962) from the stored perfect-subtree hashes."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from keel.audit.service.storage import LogCorrupted, fetch_nodes, size_and_nodes, tree_size
from keel.core.errors import ValidationFailed
from keel_client.audit import consistency_path, inclusion_path, nodes_for_ranges, range_hash


async def inclusion_proof(
    session: AsyncSession, tenant_id: str, leaf_index: int, size: int
) -> list[bytes]:
    """The proof that leaf ``leaf_index`` is in the tenant's tree of ``size`` leaves."""
    if not 0 <= leaf_index < size:
        stored = await tree_size(session, tenant_id)
        raise ValidationFailed(
            f"Leaf {leaf_index} is not in a tree of size {size} (the log has {stored})."
        )
    ranges = inclusion_path(leaf_index, size)
    wanted = set(nodes_for_ranges(ranges))
    # The size and the hashes in one round trip; the size checked before any hash is used.
    stored, nodes = await size_and_nodes(session, tenant_id, wanted)
    if size > stored:
        raise ValidationFailed(
            f"Leaf {leaf_index} is not in a tree of size {size} (the log has {stored})."
        )
    missing = wanted - nodes.keys()
    if missing:
        raise LogCorrupted(f"the log lacks tree nodes {sorted(missing)[:5]}")
    return [
        range_hash(start, end, lambda level, index: nodes[(level, index)]) for start, end in ranges
    ]


async def consistency_proof(
    session: AsyncSession, tenant_id: str, first: int, second: int
) -> list[bytes]:
    """The proof that the tenant's tree of ``first`` leaves is a prefix of that of
    ``second``."""
    stored = await tree_size(session, tenant_id)
    if not 0 < first <= second <= stored:
        raise ValidationFailed(
            f"No consistency proof from size {first} to {second} (the log has {stored})."
        )
    return await _hashes(session, consistency_path(first, second))


async def _hashes(session: AsyncSession, ranges: list[tuple[int, int]]) -> list[bytes]:
    nodes = await fetch_nodes(session, nodes_for_ranges(ranges))
    return [
        range_hash(start, end, lambda level, index: nodes[(level, index)]) for start, end in ranges
    ]
