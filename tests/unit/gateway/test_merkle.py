"""RFC 6962 / 9162 Merkle log: agreement with every transparency-dev vector (inclusion and
consistency), and proofs produced by the log that an independent verifier accepts."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from support import SHARED

from gateway.audit._merkle import (
    EMPTY_ROOT,
    CompactRange,
    MerkleTree,
    ProofError,
    leaf_hash,
    leaf_hashes,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

VECTORS = SHARED / "vectors" / "merkle"
INCLUSION = sorted((VECTORS / "inclusion").rglob("*.json"))
CONSISTENCY = sorted((VECTORS / "consistency").rglob("*.json"))
# The 8 leaves of RFC 6962's reference tests, from which the vectors' happy paths were made.
LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    bytes(range(0x60, 0x70)),
]


def _b(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


def _id(path: Path) -> str:
    return str(path.relative_to(VECTORS))


def test_every_vector_is_there() -> None:
    assert len(INCLUSION) >= 90
    assert len(CONSISTENCY) >= 95


@pytest.mark.parametrize("path", INCLUSION, ids=_id)
def test_inclusion_vector(path: Path) -> None:
    case = json.loads(path.read_text())
    proof = [_b(p) for p in case["proof"] or []]
    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(
                _b(case["leafHash"]), case["leafIdx"], case["treeSize"], proof, _b(case["root"])
            )
    else:
        verify_inclusion(
            _b(case["leafHash"]), case["leafIdx"], case["treeSize"], proof, _b(case["root"])
        )


@pytest.mark.parametrize("path", CONSISTENCY, ids=_id)
def test_consistency_vector(path: Path) -> None:
    case = json.loads(path.read_text())
    proof = [_b(p) for p in case["proof"] or []]
    args = (case["size1"], case["size2"], proof, _b(case["root1"]), _b(case["root2"]))
    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


def _reference_root(leaves: list[bytes]) -> bytes:
    """MTH straight from RFC 6962's definition, for comparison."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(_reference_root(leaves[:k]), _reference_root(leaves[k:]))


def test_the_log_reproduces_the_vectors_happy_paths() -> None:
    tree = MerkleTree([leaf_hash(x) for x in LEAVES])
    inclusion = json.loads((VECTORS / "inclusion" / "1" / "happy-path.json").read_text())
    consistency = json.loads((VECTORS / "consistency" / "1" / "happy-path.json").read_text())
    assert tree.root() == _b(inclusion["root"])
    assert tree.inclusion_proof(inclusion["leafIdx"], inclusion["treeSize"]) == [
        _b(p) for p in inclusion["proof"]
    ]
    assert tree.consistency_proof(consistency["size1"], consistency["size2"]) == [
        _b(p) for p in consistency["proof"]
    ]


@pytest.mark.parametrize("size", [*range(1, 34), 64, 65, 100, 127, 128, 129])
def test_roots_and_proofs_at_every_size(size: int) -> None:
    data = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(size)]
    tree = MerkleTree([leaf_hash(x) for x in data])
    for n in range(size + 1):
        assert tree.root(n) == _reference_root(data[:n])
    root = tree.root()
    for index in range(size):
        verify_inclusion(leaf_hash(data[index]), index, size, tree.inclusion_proof(index), root)
    for m in range(1, size + 1):
        verify_consistency(m, size, tree.consistency_proof(m), tree.root(m), root)


def test_a_wrong_proof_is_refused() -> None:
    tree = MerkleTree([leaf_hash(bytes([i])) for i in range(11)])
    proof = tree.inclusion_proof(5)
    with pytest.raises(ProofError, match="another root"):
        verify_inclusion(leaf_hash(b"other"), 5, 11, proof, tree.root())
    consistency = tree.consistency_proof(6)
    with pytest.raises(ProofError):
        verify_consistency(6, 11, consistency[:-1], tree.root(6), tree.root())
    with pytest.raises(ProofError, match="not in a tree of size"):
        tree.inclusion_proof(11)
    with pytest.raises(ProofError, match="no consistency proof"):
        tree.consistency_proof(0)
    with pytest.raises(ProofError, match="holds sizes 0 to 11, not 12"):
        tree.root(12)


def test_append_stores_only_the_subtrees_it_completes() -> None:
    tree = MerkleTree()
    for i in range(8):
        tree.append(leaf_hash(bytes([i])))
    completed = tree.completed_by_last_append()  # leaf 7 closes subtrees at levels 1, 2 and 3
    assert [(level, index) for level, index, _ in completed] == [(0, 7), (1, 3), (2, 1), (3, 0)]
    assert completed[-1][2] == tree.root()


@pytest.mark.parametrize("cut", [1, 5, 6, 8, 13, 32, 33])
def test_a_tree_started_from_a_compact_range_proves_what_follows(cut: int) -> None:
    """After a retention prune only the compact range at the cut remains: every proof about a
    later leaf, or consistency from a later size, is still the same proof."""
    from gateway.audit._merkle import CompactRange

    data = [leaf_hash(i.to_bytes(4, "big")) for i in range(70)]
    full = MerkleTree(data)
    compact = CompactRange()
    for leaf in data[:cut]:
        compact.append(leaf)
    pruned = MerkleTree.from_compact(compact)
    for leaf in data[cut:]:
        pruned.append(leaf)
    assert pruned.root() == full.root()
    assert pruned.root(cut) == full.root(cut)
    for index in range(cut, 70):
        assert pruned.inclusion_proof(index) == full.inclusion_proof(index)
    for size1 in range(cut, 70):
        assert pruned.consistency_proof(size1) == full.consistency_proof(size1)
    with pytest.raises(ProofError, match="removed by retention"):
        pruned.inclusion_proof(cut - 1)
    with pytest.raises(ProofError, match="before the retention cut"):
        pruned.consistency_proof(cut - 1) if cut > 1 else pruned.consistency_proof(0)


@pytest.mark.parametrize("start", [0, 1, 5, 64, 1000])
def test_append_all_gives_what_append_then_root_give(start: int) -> None:
    one, batched = CompactRange(), CompactRange()
    for i in range(start):
        one.append(leaf_hash(b"old %d" % i))
        batched.append(leaf_hash(b"old %d" % i))
    data = [b"record %d" % i for i in range(300)]
    expected = []
    for item in data:
        one.append(leaf_hash(item))
        expected.append(one.root())
    roots = batched.append_all(leaf_hashes(data[:1]))
    roots += batched.append_all([])
    roots += batched.append_all(leaf_hashes(data[1:77]))
    roots += batched.append_all(leaf_hashes(data[77:]))
    assert roots == expected
    assert (batched.size, batched.hashes) == (one.size, one.hashes)
    assert leaf_hashes(data) == [leaf_hash(item) for item in data]
