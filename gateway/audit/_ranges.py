"""The log's compact ranges at the sizes its proofs were made for, kept in memory so that the
next proof starts from one of them instead of from the log's first record.

A consistency proof from size m (RFC 6962 section 2.1.2) holds hashes of subtrees within
[0, m), each a subtree of m's compact range, and of ranges within [m, n); an inclusion proof of
leaf i, subtrees of i's compact range and ranges from i on. So a tree made from the compact
range at any size s <= m (`MerkleTree.from_compact`) and the leaves from s on gives the same
proof as the log rebuilt from its first leaf, while reading n - s leaves instead of n: the
witnessing submitter, which proves each checkpoint consistent with the one before
(`checkpoint_every_records` apart), then reads that many records per proof, not the whole log,
whose size only grows. A compact range of an append-only log never changes; a retention prune
only removes the records below its cut, and a range below the cut is not used (its leaves are
gone: the prune's marker is the range to start from).
"""

from __future__ import annotations

from typing import Final

from gateway.audit._merkle import CompactRange

__all__ = ["KnownRanges"]

KEPT_RANGES: Final = 64  # at most 64 * 64 hashes of 32 bytes: the sizes witnesses were told


class KnownRanges:
    """Compact ranges of one log by size, the latest `limit` kept."""

    def __init__(self, limit: int = KEPT_RANGES) -> None:
        self._limit = limit
        self._ranges: dict[int, CompactRange] = {}

    def at_or_below(self, size: int, floor: int) -> CompactRange | None:
        """A copy of the kept range of the largest size within [floor, size], if any."""
        sizes = [s for s in self._ranges if floor <= s <= size]
        if not sizes:
            return None
        found = self._ranges[max(sizes)]
        return CompactRange(found.size, found.hashes)

    def keep(self, compact: CompactRange) -> None:
        if compact.size == 0:
            return
        self._ranges.pop(compact.size, None)
        self._ranges[compact.size] = CompactRange(compact.size, compact.hashes)
        while len(self._ranges) > self._limit:
            del self._ranges[next(iter(self._ranges))]  # the one kept longest ago
