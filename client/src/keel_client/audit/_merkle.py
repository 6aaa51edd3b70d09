"""RFC 6962 Merkle trees: hashing, proof building from stored nodes, and proof verification.

A log stores only the hashes of perfect subtrees, keyed ``(level, index)``: the subtree of
``2**level`` leaves starting at leaf ``index * 2**level``. Appending a leaf adds one node
amortised (``appended_nodes``), and any root or proof needs O(log n) node lookups
(``inclusion_path`` / ``consistency_path`` name the subtrees, ``nodes_for_ranges`` the nodes to
fetch, ``range_hash`` combines them).

The verifiers follow RFC 9162 sections 2.1.3.2 and 2.1.4.2 and share no code with the proof
builders, so a third party can check a receipt without trusting the log.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

Range = tuple[int, int]
"""Leaves ``D[start:end]`` of the log, as ``(start, end)``."""

NodeLookup = Callable[[int, int], bytes]
"""``node(level, index)``: the stored hash of the perfect subtree at ``(level, index)``."""


class ProofError(ValueError):
    """A proof, hash or tree size that does not verify."""


def leaf_hash(data: bytes) -> bytes:
    """The RFC 6962 hash of a leaf: SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The RFC 6962 hash of an interior node: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


# --- Proof building -------------------------------------------------------------------------


def _split(width: int) -> int:
    """The largest power of two smaller than ``width`` (RFC 6962 section 2.1), ``width > 1``."""
    return 1 << ((width - 1).bit_length() - 1)


def inclusion_path(index: int, size: int) -> list[Range]:
    """The subtrees whose hashes form PATH(index, D[size]), bottom-up."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    path: list[Range] = []
    start, end = 0, size
    while end - start > 1:
        middle = start + _split(end - start)
        if index < middle:
            path.append((middle, end))
            end = middle
        else:
            path.append((start, middle))
            start = middle
    path.reverse()
    return path


def consistency_path(old_size: int, new_size: int) -> list[Range]:
    """The subtrees whose hashes form PROOF(old_size, D[new_size]), in proof order."""
    if not 0 < old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to {new_size}")
    path: list[Range] = []
    start, end = 0, new_size
    is_old_tree_whole = True  # SUBPROOF's b flag: D[start:old_size] is the old tree itself.
    while old_size != end:
        middle = start + _split(end - start)
        if old_size <= middle:
            path.append((middle, end))
            end = middle
        else:
            path.append((start, middle))
            start = middle
            is_old_tree_whole = False
    if not is_old_tree_whole:
        path.append((start, end))
    path.reverse()
    return path


def perfect_ranges(start: int, end: int) -> list[Range]:
    """Split a subtree of the RFC 6962 tree into aligned power-of-two subtrees, left to right."""
    width = end - start
    # A subtree of some RFC 6962 tree starts at a multiple of the power of two covering it;
    # only then does combining its perfect parts right-to-left give its hash.
    if width <= 0 or start < 0 or start % (1 << (width - 1).bit_length()):
        raise ValueError(f"({start}, {end}) is not a subtree of an RFC 6962 tree")
    ranges: list[Range] = []
    for level in reversed(range(width.bit_length())):
        if width >> level & 1:
            ranges.append((start, start + (1 << level)))
            start += 1 << level
    return ranges


def _node_of(perfect: Range) -> tuple[int, int]:
    start, end = perfect
    level = (end - start).bit_length() - 1
    return level, start >> level


def nodes_for_ranges(ranges: Iterable[Range]) -> set[tuple[int, int]]:
    """Every stored node ``(level, index)`` that ``range_hash`` needs for these ranges."""
    return {_node_of(perfect) for start, end in ranges for perfect in perfect_ranges(start, end)}


def range_hash(start: int, end: int, node: NodeLookup) -> bytes:
    """The RFC 6962 hash of D[start:end], combined from stored perfect-subtree hashes."""
    hashes = [node(*_node_of(perfect)) for perfect in perfect_ranges(start, end)]
    result = hashes.pop()
    for left in reversed(hashes):
        result = node_hash(left, result)
    return result


def root_hash(size: int, node: NodeLookup) -> bytes:
    """The root hash of the tree of the first ``size`` leaves."""
    return EMPTY_ROOT if size == 0 else range_hash(0, size, node)


def appended_nodes(index: int, node: NodeLookup, leaf_hash: bytes) -> list[tuple[int, int, bytes]]:
    """The nodes ``(level, index, hash)`` completed by appending leaf ``index``, leaf first.

    ``node`` is only asked for left siblings, nodes completed before this leaf; when appending
    a batch, it must also see the nodes returned for earlier leaves of the batch.
    """
    completed = [(0, index, leaf_hash)]
    level, position, digest = 0, index, leaf_hash
    while position & 1:  # A right child completes its parent.
        digest = node_hash(node(level, position - 1), digest)
        level, position = level + 1, position >> 1
        completed.append((level, position, digest))
    return completed


class MerkleTree:
    """An append-only RFC 6962 Merkle tree held in memory.

    Example::

        tree = MerkleTree()
        index = tree.append(b"event")
        proof = tree.inclusion_proof(index)
        verify_inclusion(leaf_hash(b"event"), index, tree.size, proof, tree.root())
    """

    def __init__(self) -> None:
        self._nodes: dict[tuple[int, int], bytes] = {}
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def append(self, leaf_data: bytes) -> int:
        """Append a leaf; return its index."""
        return self.append_hash(leaf_hash(leaf_data))

    def append_hash(self, leaf_hash: bytes) -> int:
        """Append a leaf by its hash; return its index."""
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, got {len(leaf_hash)}")
        index = self._size
        for level, position, digest in appended_nodes(index, self._node, leaf_hash):
            self._nodes[level, position] = digest
        self._size += 1
        return index

    def root(self, size: int | None = None) -> bytes:
        """The root hash at ``size`` leaves (default: now)."""
        return root_hash(self._checked_size(size), self._node)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The proof that leaf ``index`` is in the tree of ``size`` leaves (default: now)."""
        path = inclusion_path(index, self._checked_size(size))
        return [range_hash(start, end, self._node) for start, end in path]

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """The proof that the tree at ``old_size`` is a prefix of the tree at ``new_size``."""
        path = consistency_path(old_size, self._checked_size(new_size))
        return [range_hash(start, end, self._node) for start, end in path]

    def _node(self, level: int, index: int) -> bytes:
        return self._nodes[level, index]

    def _checked_size(self, size: int | None) -> int:
        if size is None:
            return self._size
        if not 0 <= size <= self._size:
            raise ValueError(f"size {size} is outside the tree (0 to {self._size})")
        return size


# --- Proof verification ---------------------------------------------------------------------


def _check_hash(name: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{name} is {len(value)} bytes, not {HASH_SIZE}")


def _check_proof_hashes(proof: Sequence[bytes]) -> None:
    for position, value in enumerate(proof):
        _check_hash(f"proof hash {position}", value)


def _check_root(name: str, computed: bytes, expected: bytes) -> None:
    if not hmac.compare_digest(computed, expected):
        raise ProofError(f"the proof leads to another {name}")


def root_from_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root hash an inclusion proof leads to (RFC 9162 section 2.1.3.2)."""
    _check_hash("leaf hash", leaf_hash)
    _check_proof_hashes(proof)
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")
    fn, sn = index, size - 1  # Named as in the RFC: the leaf's and the last leaf's positions.
    result = leaf_hash
    for sibling in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            result = node_hash(sibling, result)
            while fn & 1 == 0 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            result = node_hash(result, sibling)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the path to the root")
    return result


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that leaf ``index`` is in the tree of ``size`` leaves; raise ``ProofError`` if not."""
    _check_hash("root", root)
    _check_root("root", root_from_inclusion(leaf_hash, index, size, proof), root)


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree at ``old_size`` is a prefix of the tree at ``new_size`` (RFC 9162
    section 2.1.4.2); raise ``ProofError`` if not."""
    _check_proof_hashes(proof)
    if old_size > new_size:
        raise ProofError(f"old size {old_size} is larger than new size {new_size}")
    # RFC 9162 defines consistency only from a non-empty tree: every tree extends the empty one.
    # (From size 0, fn = -1 below would never shift to 0.)
    if old_size <= 0:
        raise ProofError(f"no consistency proof from tree size {old_size}")
    if old_size == new_size:
        if proof:
            raise ProofError("a proof between equal sizes must be empty")
        if not hmac.compare_digest(old_root, new_root):
            raise ProofError("the roots of two trees of the same size differ")
        return  # As the vectors have it: equal roots need no length check.
    _check_hash("old root", old_root)
    _check_hash("new root", new_root)
    if not proof:
        raise ProofError("consistency proof is empty")

    path = list(proof)
    if old_size & (old_size - 1) == 0:  # A power of two: the old root is the first subtree.
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1  # Named as in the RFC.
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    old_result = new_result = path[0]
    for sibling in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            old_result = node_hash(sibling, old_result)
            new_result = node_hash(sibling, new_result)
            while fn & 1 == 0 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            new_result = node_hash(new_result, sibling)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than the path to the root")
    _check_root("old root", old_result, old_root)
    _check_root("new root", new_result, new_root)
