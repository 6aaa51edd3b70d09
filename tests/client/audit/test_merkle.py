"""RFC 6962 Merkle trees: the transparency-dev/merkle vectors, then properties of random trees."""

import base64
import json
import random
from collections import ChainMap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

import keel_client.audit
from keel_client.audit import (
    EMPTY_ROOT,
    MerkleTree,
    NodeLookup,
    ProofError,
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

# Vendored from transparency-dev/merkle (Apache-2.0): provenance in the folder's README.md.
VECTORS = Path(__file__).resolve().parents[2] / "data" / "rfc6962"

# The RFC 6962 test leaves. The numbered vector directories prove trees of these: every size
# there is at most 8, so the generator is checked against every one of them.
TEST_LEAVES = [
    bytes.fromhex(leaf)
    for leaf in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]

# Vectors here use arbitrary hashes, not the test leaves' tree: only the verifier applies.
ARBITRARY_HASH_DIRECTORIES = {"additional", "single-entry"}

MAX_SIZE = 300


def vector_id(path: Path) -> str:
    return path.relative_to(VECTORS).as_posix()


def vector_files(kind: str, want_error: bool) -> list[Path]:
    files = sorted((VECTORS / kind).rglob("*.json"))
    if not files:
        # Fail collection rather than skip: without the vectors nothing checks RFC conformance.
        raise FileNotFoundError(f"no RFC 6962 vectors under {VECTORS / kind}")
    return [path for path in files if load(path)["wantErr"] is want_error]


def load(path: Path) -> dict[str, Any]:
    vector: dict[str, Any] = json.loads(path.read_text())
    for name in ("leafHash", "root", "root1", "root2"):
        if name in vector:
            vector[name] = base64.b64decode(vector[name])
    # A proof of no hashes is null in some vectors.
    vector["proof"] = [base64.b64decode(value) for value in vector["proof"] or []]
    return vector


def is_test_tree_vector(path: Path) -> bool:
    return ARBITRARY_HASH_DIRECTORIES.isdisjoint(path.relative_to(VECTORS).parts)


def tree_of(leaves: list[bytes]) -> MerkleTree:
    tree = MerkleTree()
    for leaf in leaves:
        tree.append(leaf)
    return tree


def random_leaves(rng: random.Random, count: int) -> list[bytes]:
    return [rng.randbytes(rng.randrange(40)) for _ in range(count)]


def recursive_root(leaves: list[bytes]) -> bytes:
    """MTH exactly as RFC 6962 section 2.1 writes it."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    split = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(recursive_root(leaves[:split]), recursive_root(leaves[split:]))


def lookup_in(nodes: Mapping[tuple[int, int], bytes]) -> NodeLookup:
    return lambda level, index: nodes[level, index]


def stored_nodes(leaves: list[bytes]) -> dict[tuple[int, int], bytes]:
    nodes: dict[tuple[int, int], bytes] = {}
    for index, leaf in enumerate(leaves):
        for level, position, digest in appended_nodes(index, lookup_in(nodes), leaf_hash(leaf)):
            nodes[level, position] = digest
    return nodes


def flip_bit(rng: random.Random, value: bytes) -> bytes:
    bit = rng.randrange(len(value) * 8)
    flipped = bytearray(value)
    flipped[bit // 8] ^= 1 << (bit % 8)
    return bytes(flipped)


def refusal(verify: Callable[..., None], *arguments: Any) -> str | None:
    """Why ``verify(*arguments)`` refuses a proof (the message of its ``ProofError``), or
    ``None`` when it accepts it: a verifier returns nothing, so this is what a test asserts."""
    try:
        verify(*arguments)
    except ProofError as error:
        return str(error)
    return None


def inclusion_shape(index: int, size: int) -> list[bool]:
    """Which proof hashes are right siblings: all an inclusion proof says about the size."""
    return [start > index for start, _ in inclusion_path(index, size)]


def consistency_shape(old_size: int, new_size: int) -> tuple[bool, list[bool]]:
    """All a consistency proof says about its sizes: whether the old root is the first subtree,
    and which hashes lie right of the old tree."""
    is_power_of_two = old_size & (old_size - 1) == 0
    return is_power_of_two, [start >= old_size for start, _ in consistency_path(old_size, new_size)]


# --- The vectors ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", vector_files("inclusion", want_error=False), ids=vector_id)
def test_inclusion_vector_verifies_and_the_tree_reproduces_it(path: Path) -> None:
    vector = load(path)
    index, size = vector["leafIdx"], vector["treeSize"]

    assert (
        refusal(verify_inclusion, vector["leafHash"], index, size, vector["proof"], vector["root"])
        is None
    )

    if is_test_tree_vector(path):
        tree = tree_of(TEST_LEAVES)
        assert vector["leafHash"] == leaf_hash(TEST_LEAVES[index])
        assert tree.root(size) == vector["root"]
        assert tree.inclusion_proof(index, size) == vector["proof"]


@pytest.mark.parametrize("path", vector_files("inclusion", want_error=True), ids=vector_id)
def test_tampered_inclusion_vector_is_rejected(path: Path) -> None:
    vector = load(path)

    with pytest.raises(ProofError):
        verify_inclusion(
            vector["leafHash"],
            vector["leafIdx"],
            vector["treeSize"],
            vector["proof"],
            vector["root"],
        )


@pytest.mark.parametrize("path", vector_files("consistency", want_error=False), ids=vector_id)
def test_consistency_vector_verifies_and_the_tree_reproduces_it(path: Path) -> None:
    vector = load(path)
    old_size, new_size = vector["size1"], vector["size2"]

    assert (
        refusal(
            verify_consistency,
            old_size,
            new_size,
            vector["root1"],
            vector["root2"],
            vector["proof"],
        )
        is None
    )

    if is_test_tree_vector(path):
        tree = tree_of(TEST_LEAVES)
        assert tree.root(old_size) == vector["root1"]
        assert tree.root(new_size) == vector["root2"]
        assert tree.consistency_proof(old_size, new_size) == vector["proof"]


@pytest.mark.parametrize("path", vector_files("consistency", want_error=True), ids=vector_id)
def test_tampered_consistency_vector_is_rejected(path: Path) -> None:
    vector = load(path)

    with pytest.raises(ProofError):
        verify_consistency(
            vector["size1"], vector["size2"], vector["root1"], vector["root2"], vector["proof"]
        )


# --- Paths and the node store ---------------------------------------------------------------


def test_paths_match_the_examples_of_rfc_6962_section_2_1_3() -> None:
    # The seven-leaf tree of the RFC: g=(0,2), h=(2,4), i=(4,6), j=(6,7), k=(0,4), l=(4,7).
    assert inclusion_path(0, 7) == [(1, 2), (2, 4), (4, 7)]
    assert inclusion_path(3, 7) == [(2, 3), (0, 2), (4, 7)]
    assert inclusion_path(4, 7) == [(5, 6), (6, 7), (0, 4)]
    assert inclusion_path(6, 7) == [(4, 6), (0, 4)]
    assert consistency_path(3, 7) == [(2, 3), (3, 4), (0, 2), (4, 7)]
    assert consistency_path(4, 7) == [(4, 7)]
    assert consistency_path(6, 7) == [(4, 6), (6, 7), (0, 4)]
    assert consistency_path(7, 7) == []


def test_paths_reject_positions_outside_the_tree() -> None:
    for index, size in [(0, 0), (3, 3), (-1, 3)]:
        with pytest.raises(ValueError, match="not in a tree"):
            inclusion_path(index, size)
    for old_size, new_size in [(0, 3), (4, 3)]:
        with pytest.raises(ValueError, match="no consistency proof"):
            consistency_path(old_size, new_size)


def test_perfect_ranges_split_a_subtree_into_aligned_powers_of_two() -> None:
    assert perfect_ranges(0, 7) == [(0, 4), (4, 6), (6, 7)]
    assert perfect_ranges(8, 16) == [(8, 16)]
    assert perfect_ranges(12, 15) == [(12, 14), (14, 15)]
    # Not subtrees of any RFC 6962 tree: their hash is not a right-to-left fold of these parts.
    for start, end in [(1, 4), (4, 9), (5, 5)]:
        with pytest.raises(ValueError, match="not a subtree"):
            perfect_ranges(start, end)


def test_root_from_stored_nodes_equals_the_recursive_definition() -> None:
    leaves = random_leaves(random.Random(1), MAX_SIZE)
    nodes = stored_nodes(leaves)

    for size in range(MAX_SIZE + 1):
        assert root_hash(size, lookup_in(nodes)) == recursive_root(leaves[:size])


def test_appended_nodes_are_exactly_the_perfect_subtrees() -> None:
    rng = random.Random(2)
    for size in [1, 2, 3, 8, 255, 256, rng.randrange(MAX_SIZE)]:
        leaves = random_leaves(rng, size)

        assert stored_nodes(leaves) == {
            (level, index): recursive_root(leaves[index << level : (index + 1) << level])
            for level in range(size.bit_length())
            for index in range(size >> level)
        }


def test_appended_nodes_of_a_batch_build_on_earlier_nodes_of_the_batch() -> None:
    leaves = random_leaves(random.Random(3), 29)
    stored = stored_nodes(leaves[:5])
    batch: dict[tuple[int, int], bytes] = {}
    lookup = lookup_in(ChainMap(batch, stored))

    for index in range(5, len(leaves)):
        for level, position, digest in appended_nodes(index, lookup, leaf_hash(leaves[index])):
            batch[level, position] = digest

    assert batch.keys().isdisjoint(stored)
    assert stored | batch == stored_nodes(leaves)


def test_a_proof_needs_only_the_nodes_named_for_its_path() -> None:
    rng = random.Random(4)
    leaves = random_leaves(rng, MAX_SIZE)
    tree, nodes = tree_of(leaves), stored_nodes(leaves)

    for _ in range(200):
        size = rng.randrange(2, MAX_SIZE + 1)
        index, old_size = rng.randrange(size), rng.randrange(1, size + 1)
        for path, proof in [
            (inclusion_path(index, size), tree.inclusion_proof(index, size)),
            (consistency_path(old_size, size), tree.consistency_proof(old_size, size)),
        ]:
            needed = {node: nodes[node] for node in nodes_for_ranges(path)}

            assert len(needed) <= 2 * size.bit_length()
            assert [range_hash(start, end, lookup_in(needed)) for start, end in path] == proof


# --- The verifiers against random trees -----------------------------------------------------


def test_every_inclusion_proof_verifies() -> None:
    rng = random.Random(5)
    leaves = random_leaves(rng, MAX_SIZE)
    tree = tree_of(leaves)

    for size in [*range(1, 18), 255, 256, 257, *rng.sample(range(18, MAX_SIZE + 1), 12)]:
        root = tree.root(size)
        for index in range(size):
            proof = tree.inclusion_proof(index, size)

            assert (
                refusal(verify_inclusion, leaf_hash(leaves[index]), index, size, proof, root)
                is None
            )
            assert root_from_inclusion(leaf_hash(leaves[index]), index, size, proof) == root


def test_every_consistency_proof_verifies() -> None:
    """Each proof holds the RFC 6962 subtree hashes (MTH of the leaves of each range of its
    path, computed by the recursive definition) and the verifier accepts it."""
    rng = random.Random(6)
    leaves = random_leaves(rng, MAX_SIZE)
    tree = tree_of(leaves)
    small_pairs = [(old, new) for new in range(1, 34) for old in range(1, new + 1)]
    random_pairs = [sorted(rng.sample(range(1, MAX_SIZE + 1), 2)) for _ in range(300)]

    for old_size, new_size in [*small_pairs, *random_pairs]:
        proof = tree.consistency_proof(old_size, new_size)
        old_root, new_root = tree.root(old_size), tree.root(new_size)

        assert proof == [
            recursive_root(leaves[start:end]) for start, end in consistency_path(old_size, new_size)
        ]
        assert refusal(verify_consistency, old_size, new_size, old_root, new_root, proof) is None


def test_a_flipped_bit_anywhere_is_rejected() -> None:
    rng = random.Random(7)
    leaves = random_leaves(rng, MAX_SIZE)
    tree = tree_of(leaves)

    for _ in range(100):
        size = rng.randrange(2, MAX_SIZE + 1)
        index, old_size = rng.randrange(size), rng.randrange(1, size)
        leaf, root, old_root = leaf_hash(leaves[index]), tree.root(size), tree.root(old_size)
        inclusion = tree.inclusion_proof(index, size)
        consistency = tree.consistency_proof(old_size, size)

        for position in range(len(inclusion)):
            tampered = list(inclusion)
            tampered[position] = flip_bit(rng, tampered[position])
            with pytest.raises(ProofError):
                verify_inclusion(leaf, index, size, tampered, root)
        for position in range(len(consistency)):
            tampered = list(consistency)
            tampered[position] = flip_bit(rng, tampered[position])
            with pytest.raises(ProofError):
                verify_consistency(old_size, size, old_root, root, tampered)
        with pytest.raises(ProofError):
            verify_inclusion(flip_bit(rng, leaf), index, size, inclusion, root)
        with pytest.raises(ProofError):
            verify_inclusion(leaf, index, size, inclusion, flip_bit(rng, root))
        with pytest.raises(ProofError):
            verify_consistency(old_size, size, flip_bit(rng, old_root), root, consistency)
        with pytest.raises(ProofError):
            verify_consistency(old_size, size, old_root, flip_bit(rng, root), consistency)


def test_an_inclusion_proof_is_rejected_for_any_other_leaf_index() -> None:
    rng = random.Random(8)
    leaves = random_leaves(rng, MAX_SIZE)
    tree = tree_of(leaves)

    for size in [1, 2, 7, 8, 9, *rng.sample(range(10, MAX_SIZE + 1), 10)]:
        index = rng.randrange(size)
        leaf, proof, root = (
            leaf_hash(leaves[index]),
            tree.inclusion_proof(index, size),
            tree.root(size),
        )
        for other in [-1, *range(size + 2)]:
            if other != index:
                with pytest.raises(ProofError):
                    verify_inclusion(leaf, other, size, proof, root)


def test_an_inclusion_proof_fits_another_tree_size_only_if_its_path_has_the_same_shape() -> None:
    # A proof fixes the size only through the shape of the path (RFC 9162 verifies against a
    # signed tree head, which pins the size): size 7 and size 8 look alike from leaf 0.
    rng = random.Random(9)
    leaves = random_leaves(rng, MAX_SIZE)
    tree = tree_of(leaves)
    shape_matches = 0

    for _ in range(40):
        size = rng.randrange(1, MAX_SIZE + 1)
        index = rng.randrange(size)
        leaf, proof, root = (
            leaf_hash(leaves[index]),
            tree.inclusion_proof(index, size),
            tree.root(size),
        )
        for other in range(index + 1, MAX_SIZE + 1):
            if other == size:
                continue
            if inclusion_shape(index, other) == inclusion_shape(index, size):
                shape_matches += 1
                verify_inclusion(leaf, index, other, proof, root)
            else:
                with pytest.raises(ProofError):
                    verify_inclusion(leaf, index, other, proof, root)

    assert shape_matches > 0


def test_a_consistency_proof_fits_other_sizes_only_if_its_path_has_the_same_shape() -> None:
    rng = random.Random(10)
    tree = tree_of(random_leaves(rng, 64))
    shape_matches = 0

    for _ in range(20):
        old_size, new_size = sorted(rng.sample(range(1, 65), 2))
        old_root, new_root = tree.root(old_size), tree.root(new_size)
        proof = tree.consistency_proof(old_size, new_size)
        for other_old in range(-1, 66):
            for other_new in range(-1, 66):
                if (other_old, other_new) == (old_size, new_size):
                    continue
                if 0 < other_old < other_new and consistency_shape(
                    other_old, other_new
                ) == consistency_shape(old_size, new_size):
                    shape_matches += 1
                    verify_consistency(other_old, other_new, old_root, new_root, proof)
                else:
                    with pytest.raises(ProofError):
                        verify_consistency(other_old, other_new, old_root, new_root, proof)

    assert shape_matches > 0


def test_a_proof_of_the_wrong_length_is_rejected_as_such() -> None:
    tree = tree_of(TEST_LEAVES)
    leaf, proof, root = leaf_hash(TEST_LEAVES[2]), tree.inclusion_proof(2, 7), tree.root(7)
    old_root, consistency = tree.root(3), tree.consistency_proof(3, 7)

    with pytest.raises(ProofError, match="longer"):
        verify_inclusion(leaf, 2, 7, [*proof, root], root)
    with pytest.raises(ProofError, match="shorter"):
        verify_inclusion(leaf, 2, 7, proof[:-1], root)
    with pytest.raises(ProofError, match="longer"):
        verify_consistency(3, 7, old_root, root, [*consistency, root])
    with pytest.raises(ProofError, match="shorter"):
        verify_consistency(3, 7, old_root, root, consistency[:-1])


@pytest.mark.parametrize("bad_hash", [b"", b"\x00" * 31, b"\x00" * 33])
def test_verifiers_reject_hashes_that_are_not_32_bytes(bad_hash: bytes) -> None:
    tree = tree_of(TEST_LEAVES)
    leaf, proof, root = leaf_hash(TEST_LEAVES[2]), tree.inclusion_proof(2, 8), tree.root(8)
    old_root, consistency = tree.root(3), tree.consistency_proof(3, 8)

    for arguments in [
        (bad_hash, 2, 8, proof, root),
        (leaf, 2, 8, [*proof[:-1], bad_hash], root),
        (leaf, 2, 8, proof, bad_hash),
    ]:
        with pytest.raises(ProofError, match="not 32"):
            verify_inclusion(*arguments)
    for old, new, hashes in [
        (bad_hash, root, consistency),
        (old_root, bad_hash, consistency),
        (old_root, root, [bad_hash, *consistency[1:]]),
    ]:
        with pytest.raises(ProofError, match="not 32"):
            verify_consistency(3, 8, old, new, hashes)


# --- MerkleTree -----------------------------------------------------------------------------


def test_an_empty_tree_has_the_hash_of_nothing_as_root() -> None:
    assert (
        MerkleTree().root()
        == EMPTY_ROOT
        == bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    )


def test_a_tree_answers_only_for_sizes_it_has_reached() -> None:
    tree = tree_of(TEST_LEAVES[:3])

    with pytest.raises(ValueError, match="outside the tree"):
        tree.root(4)
    with pytest.raises(ValueError, match="outside the tree"):
        tree.inclusion_proof(0, 4)
    with pytest.raises(ValueError, match="not in a tree"):
        tree.inclusion_proof(3)
    with pytest.raises(ValueError, match="no consistency proof"):
        tree.consistency_proof(0)
    with pytest.raises(ValueError, match="32 bytes"):
        tree.append_hash(b"\x00" * 31)
    assert tree.size == 3


def test_append_returns_the_index_of_the_new_leaf() -> None:
    tree = MerkleTree()

    assert [tree.append(leaf) for leaf in TEST_LEAVES] == list(range(8))
    assert tree.append_hash(leaf_hash(b"ninth")) == 8
    assert tree.size == 9


def test_public_names() -> None:
    from keel_client.audit import _merkle as merkle

    merkle_names = {name for name in vars(merkle) if not name.startswith("_")} - {
        "annotations", "hashlib", "hmac", "Callable", "Iterable", "Sequence",
    }  # fmt: skip
    assert merkle_names <= set(keel_client.audit.__all__)
    assert all(hasattr(keel_client.audit, name) for name in keel_client.audit.__all__)
    assert issubclass(ProofError, ValueError)
