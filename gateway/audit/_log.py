"""The audit log: durable appends, signed checkpoints, proofs and verification.

`AuditLog.append()` returns once the record is durable (or raises `AuditUnavailable`: the
caller releases nothing). Every `checkpoint_every_records` appends, every
`checkpoint_every_seconds` and on close, the log signs its tree head as a C2SP checkpoint with
the gateway's Ed25519 audit key and stores it. `verify()` recomputes every leaf from the stored
canonical bytes and checks the chain of roots and every stored (and any trusted) checkpoint,
naming the first index where the log stops being what was signed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.audit._checkpoint import (
    Checkpoint,
    CheckpointError,
    sign_checkpoint,
    verify_checkpoint,
)
from gateway.audit._merkle import CompactRange, MerkleTree, leaf_hash
from gateway.audit._record import AuditRecord
from gateway.audit._store import Appended, AuditStore
from gateway.audit.errors import AuditUnavailable

__all__ = ["AuditLog", "Verification"]

log = logging.getLogger("tongban.audit")

VERIFY_CHUNK = 10_000  # rows read at a time while verifying


@dataclass(frozen=True, slots=True)
class Verification:
    intact: bool
    records_checked: int
    checkpoints_checked: int
    first_bad_index: int  # -1 when intact
    problem: str  # "" when intact
    latest: Checkpoint | None


class AuditLog:
    def __init__(
        self,
        store: AuditStore,
        *,
        origin: str,
        key: ed25519.Ed25519PrivateKey,
        key_name: str,
        checkpoint_every_records: int = 1000,
        checkpoint_every_seconds: float = 60.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.origin = origin
        self._key = key
        self.public_key = key.public_key()
        self.key_name = key_name
        self._every_records = checkpoint_every_records
        self._every_seconds = checkpoint_every_seconds
        self._clock = clock
        self._since_checkpoint = 0
        self._checkpointing: asyncio.Task[None] | None = None
        self._timer: asyncio.Task[None] | None = None

    async def open(self) -> None:
        await self.store.open()
        self._timer = asyncio.create_task(self._checkpoint_periodically(), name="audit-checkpoints")

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        if self._checkpointing is not None:
            with contextlib.suppress(Exception):
                await self._checkpointing
        try:
            await self.checkpoint()
        except AuditUnavailable as exc:
            log.warning("no final checkpoint: %s", exc)
        await self.store.close()

    async def append(self, record: AuditRecord) -> Appended:
        appended = await self.store.append(record)
        self._since_checkpoint += 1
        if self._since_checkpoint >= self._every_records and self._checkpointing is None:
            self._checkpointing = asyncio.create_task(self._checkpoint_in_background())
        return appended

    async def _checkpoint_in_background(self) -> None:
        try:
            await self.checkpoint()
        except AuditUnavailable as exc:
            log.warning("checkpoint failed: %s", exc)
        finally:
            self._checkpointing = None

    async def _checkpoint_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._every_seconds)
            if self._since_checkpoint:
                try:
                    await self.checkpoint()
                except AuditUnavailable as exc:
                    log.warning("checkpoint failed: %s", exc)

    async def checkpoint(self) -> Checkpoint:
        """Sign and store the current tree head (also when nothing changed since the last)."""
        head = await self.store.head()
        self._since_checkpoint = 0
        checkpoint = sign_checkpoint(self.origin, head.size, head.root, self._key, self.key_name)
        await self.store.add_checkpoint(checkpoint, self._clock())
        return checkpoint

    async def latest_checkpoint(self) -> Checkpoint | None:
        checkpoints = await self.store.checkpoints()
        return checkpoints[-1] if checkpoints else None

    async def _tree(self, size: int) -> MerkleTree:
        tree = MerkleTree()
        for start in range(0, size, VERIFY_CHUNK):
            for row in await self.store.rows(start, min(size, start + VERIFY_CHUNK)):
                tree.append(row.leaf_hash)
        if tree.size != size:
            raise AuditUnavailable(f"the store returned {tree.size} of {size} records")
        return tree

    async def inclusion_proof(
        self, index: int, size: int | None = None
    ) -> tuple[list[bytes], int, bytes, bytes]:
        """(proof, tree size, root, leaf hash) for the record at `index` in a tree of `size`."""
        size = (await self.store.head()).size if size is None else size
        tree = await self._tree(size)
        return tree.inclusion_proof(index, size), size, tree.root(size), tree.node(0, index)

    async def consistency_proof(
        self, size1: int, size2: int | None = None
    ) -> tuple[list[bytes], int, bytes]:
        """(proof, second size, second root) that the tree of `size1` is a prefix."""
        size2 = (await self.store.head()).size if size2 is None else size2
        tree = await self._tree(size2)
        return tree.consistency_proof(size1, size2), size2, tree.root(size2)

    async def verify(self, trusted: Checkpoint | None = None) -> Verification:
        """Recompute the log from its stored records and compare with every checkpoint.

        (1) every stored and trusted checkpoint is signed by this log's audit key
        (2) records are contiguous from index 0, each in canonical form, each leaf hash and
            each stored root what the records before it give
        (3) every checkpoint's size is covered and its root is the recomputed root at that size
        (4) the columns the store queries by say what the records say
        """
        checkpoints: list[Checkpoint] = []
        for stored in [*await self.store.checkpoints(), *([trusted] if trusted else [])]:  # (1)
            try:
                checkpoints.append(
                    verify_checkpoint(
                        stored.note, self.public_key, self.key_name, origin=self.origin
                    )
                )
            except CheckpointError as exc:
                return Verification(
                    False,
                    0,
                    len(checkpoints),
                    0 if stored.size else -1,
                    f"checkpoint of size {stored.size}: {exc}",
                    None,
                )
        checkpoints.sort(key=lambda c: c.size)
        wanted = {c.size for c in checkpoints}
        roots: dict[int, bytes] = {}
        head = await self.store.head()
        span = max([head.size, *wanted])
        compact = CompactRange()
        if 0 in wanted:
            roots[0] = compact.root()
        index = 0
        problem = ""
        for start in range(0, span, VERIFY_CHUNK):  # (2)
            for row in await self.store.rows(start, min(span, start + VERIFY_CHUNK)):
                if row.index != index:
                    problem = f"record {index} is missing (the next stored record is {row.index})"
                    break
                try:
                    AuditRecord.from_canonical(row.canonical)
                except (ValueError, KeyError, TypeError):
                    problem = f"record {index} is not a canonical audit record"
                    break
                leaf = leaf_hash(row.canonical)
                if leaf != row.leaf_hash:
                    problem = (
                        f"record {index} was changed after it was written (its leaf hash differs)"
                    )
                    break
                compact.append(leaf)
                if compact.root() != row.root:
                    problem = f"record {index} does not follow the records before it (the log root differs)"
                    break
                if compact.size in wanted:
                    roots[compact.size] = compact.root()
                index += 1
            if problem or index < min(span, start + VERIFY_CHUNK):
                break
        if not problem and index < span:
            problem = f"record {index} is missing: the log ends at {index} but {span} records were signed or counted"
        latest = checkpoints[-1] if checkpoints else None
        if problem:
            return Verification(False, index, len(checkpoints), index, problem, latest)
        covered = 0  # records up to here agree with a signed checkpoint
        for checkpoint in checkpoints:  # (3)
            if roots.get(checkpoint.size) != checkpoint.root:
                return Verification(
                    False,
                    index,
                    len(checkpoints),
                    covered,
                    f"the records from {covered} on do not give the root signed for size {checkpoint.size}",
                    latest,
                )
            covered = checkpoint.size
        mismatch = await self.store.column_mismatches()  # (4)
        if mismatch is not None:
            return Verification(
                False,
                index,
                len(checkpoints),
                mismatch,
                f"record {mismatch}'s query columns were edited: oversight queries would not find it by what it records",
                latest,
            )
        if compact.root() != head.root or compact.size != head.size:
            return Verification(
                False,
                index,
                len(checkpoints),
                compact.size,
                "the stored tree head does not match the records",
                latest,
            )
        return Verification(True, index, len(checkpoints), -1, "", latest)
