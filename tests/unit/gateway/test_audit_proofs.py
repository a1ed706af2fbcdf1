"""The log's proofs start from the compact range kept at a size it proved before
(`gateway.audit._ranges`) instead of from its first record: for every (old, new) pair, asked in
any order, they are the proofs of the tree rebuilt from every leaf, and the transparency-dev
vectors' happy paths come out of the log as they are written."""

from __future__ import annotations

import base64
import json
import random

import pytest
from audit_contract import make_record
from cryptography.hazmat.primitives.asymmetric import ed25519
from support import SHARED

from gateway.audit import AuditLog, MemoryAuditStore
from gateway.audit._merkle import (
    MerkleTree,
    ProofError,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from gateway.audit._ranges import KnownRanges
from gateway.audit._store import StoredRow
from gateway.audit.errors import AuditUnavailable

VECTORS = SHARED / "vectors" / "merkle"
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
SIZE = 140


def _log(store: MemoryAuditStore) -> AuditLog:
    return AuditLog(
        store,
        origin="audit.tongban/510000",
        key=ed25519.Ed25519PrivateKey.generate(),
        key_name="audit-510000",
        checkpoint_every_records=10**6,
    )


async def _filled(size: int = SIZE) -> tuple[AuditLog, MerkleTree]:
    store = MemoryAuditStore()
    log = _log(store)
    for i in range(size):
        await log.append(make_record(i))
    full = MerkleTree([row.leaf_hash for row in await store.rows(0, size)])
    return log, full


def _pairs(size: int, seed: int) -> list[tuple[int, int]]:
    pairs = [(old, new) for new in range(1, size + 1) for old in range(1, new + 1)]
    random.Random(seed).shuffle(pairs)
    return pairs[:1500]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_consistency_proofs_are_the_full_rebuilds_for_any_pairs_in_any_order(
    seed: int,
) -> None:
    log, full = await _filled()
    for old, new in [
        *_pairs(SIZE, seed),
        *((s, s + 7) for s in range(1, SIZE - 7, 3)),  # as the witnessing submitter asks
    ]:
        proof, size, root = await log.consistency_proof(old, new)
        assert (proof, size, root) == (full.consistency_proof(old, new), new, full.root(new))
        verify_consistency(old, new, proof, full.root(old), root)
    proof, size, root = await log.consistency_proof(37)  # to the head
    assert (proof, size, root) == (full.consistency_proof(37), SIZE, full.root())


@pytest.mark.parametrize("seed", [4, 5])
async def test_inclusion_proofs_are_the_full_rebuilds_after_any_proofs(seed: int) -> None:
    log, full = await _filled()
    rng = random.Random(seed)
    for _ in range(400):
        new = rng.randrange(1, SIZE + 1)
        if rng.random() < 0.5:
            await log.consistency_proof(rng.randrange(1, new + 1), new)
        index = rng.randrange(new)
        proof, size, root, leaf = await log.inclusion_proof(index, new)
        assert (proof, size, root, leaf) == (
            full.inclusion_proof(index, new),
            new,
            full.root(new),
            full.node(0, index),
        )
        verify_inclusion(leaf, index, new, proof, root)


async def test_requests_no_proof_answers_are_refused_as_before() -> None:
    log, _ = await _filled(20)
    await log.consistency_proof(10, 20)  # a range kept at 20
    with pytest.raises(ProofError):
        await log.consistency_proof(20, 12)
    with pytest.raises(ProofError):
        await log.consistency_proof(0, 20)
    with pytest.raises(ProofError):
        await log.inclusion_proof(20, 20)
    with pytest.raises(AuditUnavailable, match="returned 20 of 25 records"):
        await log.consistency_proof(10, 25)


def _vector_log() -> AuditLog:
    """A log whose stored leaves are the RFC 6962 reference leaves."""
    store = MemoryAuditStore()
    store.tamper([StoredRow(i, data, leaf_hash(data), b"") for i, data in enumerate(LEAVES)])
    return _log(store)


def _b(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


@pytest.mark.parametrize("n", range(5))
async def test_the_vectors_happy_paths_come_out_of_the_log(n: int) -> None:
    consistency = json.loads((VECTORS / "consistency" / str(n) / "happy-path.json").read_text())
    inclusion = json.loads((VECTORS / "inclusion" / str(n) / "happy-path.json").read_text())
    log = _vector_log()
    for _ in range(2):  # from the first leaf, then from the range kept by the first time
        proof, _, root = await log.consistency_proof(consistency["size1"], consistency["size2"])
        assert ([*proof], root) == (
            [_b(p) for p in consistency["proof"] or []],
            _b(consistency["root2"]),
        )
        proof, _, root, _ = await log.inclusion_proof(inclusion["leafIdx"], inclusion["treeSize"])
        assert (proof, root) == ([_b(p) for p in inclusion["proof"] or []], _b(inclusion["root"]))


def test_kept_ranges_are_copies_the_latest_ones_within_the_bound() -> None:
    tree = MerkleTree()
    ranges = KnownRanges(limit=3)
    for i in range(10):
        tree.append(leaf_hash(bytes([i])))
        ranges.keep(tree.compact())
    assert ranges.at_or_below(6, 0) is None  # 1 to 7 were let go
    found = ranges.at_or_below(9, 0)
    assert found is not None
    assert (found.size, found.root()) == (9, tree.root(9))
    found.append(leaf_hash(b"x"))  # a copy: what is kept does not move
    again = ranges.at_or_below(9, 0)
    assert again is not None
    assert again.size == 9
    assert ranges.at_or_below(100, 11) is None  # none at or above the floor


def test_a_trees_compact_range_is_the_one_appends_give() -> None:
    from gateway.audit._merkle import CompactRange

    data = [leaf_hash(i.to_bytes(4, "big")) for i in range(70)]
    for cut in (0, 1, 6, 33):
        compact = CompactRange()
        for leaf in data[:cut]:
            compact.append(leaf)
        tree = MerkleTree.from_compact(compact) if cut else MerkleTree()
        for leaf in data[cut:]:
            tree.append(leaf)
            compact.append(leaf)
            assert (tree.compact().size, tree.compact().hashes) == (compact.size, compact.hashes)
