"""RFC 6962 / RFC 9162 Merkle trees: hashing, roots, proofs and their verification.

Hashes: leaf `SHA-256(0x00 || data)`, node `SHA-256(0x01 || left || right)`, empty tree
`SHA-256("")`. A log keeps, per level, the hashes of its complete aligned subtrees (level 0 the
leaves, level k the subtrees of 2**k leaves): appending adds one leaf and the subtrees it
completes (amortised two hashes), and the root at any size, inclusion proofs and consistency
proofs need only O(log² n) of those stored hashes, never a rehash of the log.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

from gateway._errors import GatewayError

__all__ = [
    "EMPTY_ROOT",
    "CompactRange",
    "MerkleTree",
    "NodeSource",
    "ProofError",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "leaf_hashes",
    "node_hash",
    "root_hash",
    "verify_consistency",
    "verify_inclusion",
]

EMPTY_ROOT = hashlib.sha256(b"").digest()
HASH_SIZE = 32


class ProofError(GatewayError, ValueError):
    """A proof that does not prove what it claims, or a request no proof can answer."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def leaf_hashes(data: Sequence[bytes]) -> list[bytes]:
    """`leaf_hash` of each, in one pass (a batch of records)."""
    sha256 = hashlib.sha256
    return [sha256(b"\x00" + item).digest() for item in data]


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class NodeSource(Protocol):
    """Stored hashes of complete aligned subtrees: `node(level, index)` covers leaves
    [index * 2**level, (index + 1) * 2**level)."""

    def node(self, level: int, index: int) -> bytes: ...


def _largest_power_of_two_below(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def _range_hash(nodes: NodeSource, start: int, end: int) -> bytes:
    """MTH of leaves [start, end) where `start` is aligned to the range's largest subtree."""
    size = end - start
    if size & (size - 1) == 0:  # a complete aligned subtree: stored
        level = size.bit_length() - 1
        return nodes.node(level, start >> level)
    k = _largest_power_of_two_below(size)
    return node_hash(_range_hash(nodes, start, start + k), _range_hash(nodes, start + k, end))


def root_hash(nodes: NodeSource, size: int) -> bytes:
    return EMPTY_ROOT if size == 0 else _range_hash(nodes, 0, size)


def inclusion_proof(nodes: NodeSource, index: int, size: int) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 6962 section 2.1.1."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")
    proof: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _largest_power_of_two_below(end - start)
        if index < start + k:
            proof.append(_range_hash(nodes, start + k, end))
            end = start + k
        else:
            proof.append(_range_hash(nodes, start, start + k))
            start += k
    proof.reverse()
    return proof


def consistency_proof(nodes: NodeSource, size1: int, size2: int) -> list[bytes]:
    """PROOF(size1, D[0:size2]) of RFC 6962 section 2.1.2."""
    if not 0 < size1 <= size2:
        raise ProofError(f"no consistency proof from size {size1} to size {size2}")
    proof: list[bytes] = []
    start, end, m, complete = 0, size2, size1, True
    # SUBPROOF(m, D[start:end], complete), unrolled: the recursion always descends into one side.
    while True:
        n = end - start
        if m == n:
            if not complete:
                proof.append(_range_hash(nodes, start, end))
            break
        k = _largest_power_of_two_below(n)
        if m <= k:
            proof.append(_range_hash(nodes, start + k, end))
            end = start + k
        else:
            proof.append(_range_hash(nodes, start, start + k))
            start += k
            m -= k
            complete = False
    proof.reverse()
    return proof


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 section 2.1.3.2; raise `ProofError` unless the proof holds."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    if any(len(h) != HASH_SIZE for h in (leaf, root, *proof)):
        raise ProofError("hashes are 32 bytes")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("the proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the proof is shorter than the tree is deep")
    if r != root:
        raise ProofError("the proof leads to another root")


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """RFC 9162 section 2.1.4.2; raise `ProofError` unless the proof holds."""
    if size1 < 0 or size2 < size1:
        raise ProofError(f"no consistency between sizes {size1} and {size2}")
    if size1 == 0:
        raise ProofError("consistency with the empty tree proves nothing")
    if size1 == size2:
        if proof:
            raise ProofError("a proof between equal sizes is empty")
        if root1 != root2:
            raise ProofError("equal sizes with different roots")
        return
    if not proof:
        raise ProofError("the proof is empty")
    if any(len(h) != HASH_SIZE for h in (root1, root2, *proof)):
        raise ProofError("hashes are 32 bytes")
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # size1 is a power of two: its root is the first node
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the proof is longer than the trees are deep")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the proof is shorter than the trees are deep")
    if fr != root1:
        raise ProofError("the proof does not lead to the first root")
    if sr != root2:
        raise ProofError("the proof does not lead to the second root")


class MerkleTree:
    """An in-memory log of leaf hashes with its complete subtrees (a `NodeSource`).

    A tree may start from a compact range (`from_compact`): the leaves before it are gone (a
    retention prune), but its subtrees are exactly the ones any proof about a later leaf, or
    about consistency from a later size, needs.
    """

    def __init__(self, leaves: Sequence[bytes] = ()) -> None:
        self._levels: list[dict[int, bytes]] = [{}]
        self._size = 0
        self.first = 0  # the first leaf this tree still holds
        for leaf in leaves:
            self.append(leaf)

    @classmethod
    def from_compact(cls, compact: CompactRange) -> MerkleTree:
        tree = cls()
        start = 0
        for piece in compact.hashes:  # largest first: the binary decomposition of the size
            level = (compact.size - start).bit_length() - 1
            while start + (1 << level) > compact.size:
                level -= 1
            tree._node_row(level)[start >> level] = piece
            start += 1 << level
        tree._size = tree.first = compact.size
        return tree

    def _node_row(self, level: int) -> dict[int, bytes]:
        while len(self._levels) <= level:
            self._levels.append({})
        return self._levels[level]

    @property
    def size(self) -> int:
        return self._size

    def append(self, leaf: bytes) -> int:
        """Add a leaf hash; return its index. Completes the subtrees it closes."""
        index = self._size
        self._levels[0][index] = leaf
        self._size += 1
        level, position = 0, index
        while position & 1:  # a right child: its parent is complete now
            row = self._levels[level]
            parent = node_hash(row[position - 1], row[position])
            self._node_row(level + 1)[position >> 1] = parent
            level, position = level + 1, position >> 1
        return index

    def completed_by_last_append(self) -> list[tuple[int, int, bytes]]:
        """(level, index, hash) of every node the last append stored, leaf included."""
        index = self._size - 1
        out = [(0, index, self._levels[0][index])]
        level, position = 0, index
        while position & 1:
            level, position = level + 1, position >> 1
            out.append((level, position, self._levels[level][position]))
        return out

    def compact(self) -> CompactRange:
        """The compact range at this tree's size: its complete subtrees of the size's binary
        form, each stored (a tree from a compact range keeps every subtree that ends at or
        after its first leaf, and the range's own)."""
        hashes: list[bytes] = []
        start = 0
        for level in range(self._size.bit_length() - 1, -1, -1):
            if self._size >> level & 1:
                hashes.append(self.node(level, start >> level))
                start += 1 << level
        return CompactRange(self._size, hashes)

    def node(self, level: int, index: int) -> bytes:
        try:
            return self._levels[level][index]
        except (IndexError, KeyError):
            if (index + 1) << level <= self.first:
                raise ProofError(
                    f"leaves {index << level} to {((index + 1) << level) - 1} were removed by retention"
                ) from None
            raise ProofError(f"no complete subtree at level {level}, index {index}") from None

    def root(self, size: int | None = None) -> bytes:
        size = self._size if size is None else size
        if not self.first <= size <= self._size:
            raise ProofError(f"the log holds sizes {self.first} to {self._size}, not {size}")
        return root_hash(self, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        size = self._size if size is None else size
        if size > self._size:
            raise ProofError(f"the log has {self._size} leaves, not {size}")
        if index < self.first:
            raise ProofError(
                f"leaf {index} was removed by retention (the log starts at {self.first})"
            )
        return inclusion_proof(self, index, size)

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        size2 = self._size if size2 is None else size2
        if size2 > self._size:
            raise ProofError(f"the log has {self._size} leaves, not {size2}")
        if size1 < self.first:
            raise ProofError(f"size {size1} is before the retention cut ({self.first})")
        return consistency_proof(self, size1, size2)


class CompactRange:
    """The right edge of a log (one hash per complete subtree of the size's binary form): all
    an appender needs to extend the log and know its root, in O(log n) space."""

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != size.bit_count():
            raise ProofError(f"a compact range of size {size} holds {size.bit_count()} hashes")
        self.size = size
        self.hashes = list(hashes)  # left to right: the largest subtree first

    def append(self, leaf: bytes) -> None:
        self.hashes.append(leaf)
        position = self.size
        while position & 1:
            right = self.hashes.pop()
            left = self.hashes.pop()
            self.hashes.append(node_hash(left, right))
            position >>= 1
        self.size += 1

    def append_all(self, leaves: Sequence[bytes]) -> list[bytes]:
        """Append each leaf hash in turn; the root after each (what `append` then `root` give,
        for a batch in one pass). Each stored hash's `0x01 || hash` is hashed once, and every
        node with it on the left continues a copy of that state (a root after each leaf costs
        one node hash per subtree of the size: this halves their cost)."""
        sha256 = hashlib.sha256
        hashes = self.hashes
        lefts = [sha256(b"\x01" + h) for h in hashes]  # SHA-256 states after 0x01 || hash
        size = self.size
        roots: list[bytes] = []
        for leaf in leaves:
            node = leaf
            position = size
            while position & 1:  # the subtrees this leaf completes
                hashes.pop()
                state = lefts.pop().copy()
                state.update(node)
                node = state.digest()
                position >>= 1
            hashes.append(node)
            lefts.append(sha256(b"\x01" + node))
            size += 1
            root = node
            for at in range(len(hashes) - 2, -1, -1):
                state = lefts[at].copy()
                state.update(root)
                root = state.digest()
            roots.append(root)
        self.size = size
        return roots

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        root = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            root = node_hash(left, root)
        return root

    def to_bytes(self) -> bytes:
        return b"".join(self.hashes)

    @classmethod
    def from_bytes(cls, size: int, data: bytes) -> CompactRange:
        if len(data) != HASH_SIZE * size.bit_count():
            raise ProofError("a stored compact range has the wrong length")
        return cls(size, [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)])
