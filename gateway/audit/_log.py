"""The audit log: durable appends, signed checkpoints, proofs and verification.

`AuditLog.append()` returns once the record is durable (or raises `AuditUnavailable`: the
caller releases nothing). Each append is bounded (`append_timeout_seconds`) and goes through the
audit store's circuit breaker: a store that does not make a record durable in time (a frozen
database) is refused at once while the breaker is open, instead of every call waiting out its
deadline. A record whose append timed out, or whose caller was cancelled while it waited, may
still become durable later (it was already on its way to the database); if it claims an allowed
access, the log then appends a follow-up record for the same request, failed with
AUDIT_UNAVAILABLE and no fields: the answer was not released (and the access report the record
carried for its owner, if it is still waiting in the outbox, is withdrawn). Every `checkpoint_every_records` appends, every
`checkpoint_every_seconds`, on close and when oversight asks (`checkpoint_if_grown`), the log
signs its tree head as a C2SP checkpoint with the gateway's Ed25519 audit key, under the key name
of its origin, and stores it with the time it was signed. `verify()` recomputes every leaf from the stored
canonical bytes and checks the chain of roots and every stored (and any trusted) checkpoint,
naming the first index where the log stops being what was signed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.audit._checkpoint import (
    Checkpoint,
    CheckpointError,
    sign_checkpoint,
    verify_checkpoint,
)
from gateway.audit._cosignature import Cosignature, cosign
from gateway.audit._follow_up import NOT_RELEASED, FollowUps
from gateway.audit._integrity import (
    MIN_RETENTION,
    VERIFY_CHUNK,
    Verification,
    check_prune_request,
    compact_at_cut,
    prune_record,
)
from gateway.audit._merkle import CompactRange, MerkleTree
from gateway.audit._ranges import KnownRanges
from gateway.audit._record import AuditRecord
from gateway.audit._store import (
    AlsoWrite,
    Appended,
    AuditStore,
    MemoryAuditStore,
    Outbound,
    Pending,
    PruneMarker,
    StoredRow,
)
from gateway.audit._verify import verify_log
from gateway.audit.errors import AuditOutcomeUnknown, AuditUnavailable
from gateway.breaker import BreakerOpen, CircuitBreaker

__all__ = [
    "APPEND_TIMEOUT_SECONDS",
    "MIN_RETENTION",
    "NOT_RELEASED",
    "READ_TIMEOUT_SECONDS",
    "AuditLog",
    "Pruned",
    "Verification",
]

log = logging.getLogger("tongban.audit")
_T = TypeVar("_T")
# One line per audited access, at INFO (`--log-level INFO`), like a proxy's access log: what the
# audit record says, minus what a log line may not carry (the subject is a pseudonym prefix; the
# case id and the operator's name stay in the audit log, where access to them is itself audited).
access_log = logging.getLogger("tongban.access")


APPEND_TIMEOUT_SECONDS = 2.0  # an append not durable by then is refused (AUDIT_UNAVAILABLE)
# A read (oversight listings, a report's checks) may scan: bounded as PostgreSQL's statements are.
READ_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Pruned:
    first: int  # the first record removed
    cut: int  # records below this index are gone
    at_cut: Checkpoint  # signed before the removal: vouches for what remains
    at_head: Checkpoint  # the head, including the record of the prune


class AuditObserver(Protocol):
    """Told of every append and checkpoint (the gateway's metrics)."""

    def audit_append(self, ok: bool) -> None: ...

    def checkpoint(self, size: int, signed_at: datetime | float) -> None: ...


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Read the outcome of a task nobody awaits any more (no 'never retrieved' warning)."""
    if not future.cancelled():
        future.exception()


class AuditLog:
    def __init__(
        self,
        store: AuditStore,
        *,
        origin: str,
        key: ed25519.Ed25519PrivateKey | None = None,
        key_name: str,
        former_key_names: tuple[str, ...] = (),
        public_key: ed25519.Ed25519PublicKey | None = None,
        checkpoint_every_records: int = 1000,
        checkpoint_every_seconds: float = 60.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        append_timeout_seconds: float = APPEND_TIMEOUT_SECONDS,
        read_timeout_seconds: float = READ_TIMEOUT_SECONDS,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if append_timeout_seconds <= 0 or read_timeout_seconds <= 0:
            raise ValueError("append_timeout_seconds and read_timeout_seconds are positive")
        self.store = store
        self.append_timeout_seconds = append_timeout_seconds
        self.read_timeout_seconds = read_timeout_seconds
        self.breaker = breaker or CircuitBreaker(
            name="audit store", open_note="answers are refused with AUDIT_UNAVAILABLE"
        )
        self.origin = origin
        if key is None and public_key is None:
            raise ValueError("an audit log needs its signing key, or its public key to verify")
        self._key = key
        verifying = key.public_key() if key is not None else public_key
        assert verifying is not None
        self.public_key: ed25519.Ed25519PublicKey = verifying
        self.key_name = key_name
        # Names the same key signed under before (notes name their key; the key hash covers it).
        self.key_names = (key_name, *(n for n in former_key_names if n != key_name))
        self._every_records = checkpoint_every_records
        self._every_seconds = checkpoint_every_seconds
        self._clock = clock
        self._follow_ups = FollowUps(store, clock, self.breaker.success)
        self._ranges = KnownRanges()  # where the next proof's tree starts (`_tree`)
        self._since_checkpoint = 0
        self._checkpointing: asyncio.Task[None] | None = None
        self._timer: asyncio.Task[None] | None = None
        self.observer: AuditObserver | None = None
        # Told of every checkpoint signed (the witnessing submitter): must not block or raise.
        self.checkpoint_listeners: list[Callable[[Checkpoint], None]] = []
        # A token over a checkpoint's note, or None ([timestamp]; blocking: run in a thread).
        self.time_stamper: Callable[[bytes], bytes | None] | None = None
        # Stores kept beside the log in its own store, by kind, each made once per log and
        # shared by every part of the gateway that asks (`gateway.cases.case_store_for`).
        self.companions: dict[str, object] = {}
        # Closed before the store (a companion's own connections: the case store's lock).
        self.closers: list[Callable[[], Awaitable[None]]] = []

    async def open(self) -> None:
        await self.store.open()
        if self._key is not None:
            self._timer = asyncio.create_task(
                self._checkpoint_periodically(), name="audit-checkpoints"
            )

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        if self._checkpointing is not None:
            with contextlib.suppress(Exception):
                await self._checkpointing
        # appends that timed out: their follow-ups are written before closing, for a while
        await self._follow_ups.wait(self.append_timeout_seconds)
        if self._key is not None:
            try:
                await self.checkpoint()
            except AuditUnavailable as exc:
                log.warning("no final checkpoint: %s", exc)
        for close in self.closers:
            with contextlib.suppress(Exception):
                await close()
        await self.store.close()

    async def append(
        self, record: AuditRecord, outbound: Outbound | None = None, also: AlsoWrite | None = None
    ) -> Appended:
        """Make `record` durable (with `outbound`, the message its access owes another region,
        and `also`'s rows, in the same transaction); raise `AuditUnavailable` if it is not
        within the bound."""
        try:
            appended = await self._append(record, outbound, also)
        except AuditUnavailable:
            if self.observer is not None:
                self.observer.audit_append(False)
            raise
        self._appended(record, appended)
        return appended

    async def append_all(self, records: Sequence[AuditRecord]) -> list[Appended]:
        """Make every record durable, as `append` would each (no outbound message, no `also`),
        within one bound and through the breaker once: one timeout and one shield for the
        batch, and one hand-off to a store that takes a batch (`append_many`), instead of one
        each. Raise `AuditUnavailable` if any is not durable within the bound (the others may
        be: an allowed one that became durable late is followed up as `append`'s are)."""
        if not records:
            return []  # nothing asked of the store (nor of its breaker)
        try:
            outcomes = await self._append_all(records)
        except AuditUnavailable:
            if self.observer is not None:
                for _ in records:
                    self.observer.audit_append(False)
            raise
        failed: AuditUnavailable | None = None
        for record, outcome in zip(records, outcomes, strict=True):
            if isinstance(outcome, Appended):
                self._appended(record, outcome)
                continue
            if self.observer is not None:
                self.observer.audit_append(False)
            if failed is None:
                failed = (
                    outcome
                    if isinstance(outcome, AuditUnavailable)
                    else AuditUnavailable(f"the audit record was not made durable: {outcome}")
                )
        if failed is not None:
            raise failed
        return [o for o in outcomes if isinstance(o, Appended)]

    def _appended(self, record: AuditRecord, appended: Appended) -> None:
        """After `record` became durable: the observer, the access log line, the next
        checkpoint's count."""
        if self.observer is not None:
            self.observer.audit_append(True)
        if access_log.isEnabledFor(logging.INFO):
            # One structured event per audited access (fields: docs/logging.md); the values are
            # the record's own, escaped and redacted by the log handler (gateway/logs/).
            access_log.info(
                "access",
                extra={
                    "audit_id": f"{self.origin}#{appended.index}",
                    "rpc": record.rpc,
                    "request_id": record.request_id,
                    "caller_region": record.caller_region,
                    "caller_agency": record.caller_agency,
                    "provider_region": record.provider_region,
                    "dataset": record.dataset,
                    "purpose": record.purpose,
                    "subject": record.subject[:16],
                    "field_count": len(record.fields),
                    "outcome": record.outcome.value,
                    "reason": record.reason,
                    "cache_hit": record.cache_hit,
                    "latency_us": record.latency_us,
                },
            )
        self._since_checkpoint += 1
        if self._since_checkpoint >= self._every_records and self._checkpointing is None:
            self._checkpointing = asyncio.create_task(self._checkpoint_in_background())

    async def read(self, make: Callable[[], Awaitable[_T]]) -> _T:
        """`await make()`, a read of the store (`store.query`, `store.rows`, ...), within
        `read_timeout_seconds` and through the appends' breaker: a frozen store is not waited
        for on the request path. Raises `AuditUnavailable`."""
        # The read runs in a task of its own, so that giving up on it takes no longer than
        # the bound: a driver may spend seconds more on its cancellation (psycopg asks the
        # server to cancel the query), which a frozen server makes it wait out.
        started: list[asyncio.Future[_T]] = []

        def start() -> Awaitable[_T]:
            started.append(asyncio.ensure_future(make()))
            return asyncio.shield(started[0])

        try:
            return await self.breaker.call(
                start,
                timeout_seconds=self.read_timeout_seconds,
                failed=lambda exc: isinstance(exc, AuditUnavailable),
            )
        except BreakerOpen as exc:
            raise AuditUnavailable(str(exc)) from exc
        except TimeoutError as exc:
            raise AuditUnavailable(
                f"the audit store did not answer within {self.read_timeout_seconds:g} s"
            ) from exc
        finally:
            if started and not started[0].done():
                started[0].cancel()  # ends in the background
                started[0].add_done_callback(_retrieved)

    # -- the outbox (see AuditStore) ----------------------------------------------------------
    async def outbox(self, destination: str, limit: int) -> list[Pending]:
        return await self.read(lambda: self.store.outbox(destination, limit))

    async def outbox_backlog(self) -> dict[str, int]:
        return await self.read(self.store.outbox_backlog)

    async def acknowledge(self, destination: str, through: int) -> None:
        await self.read(lambda: self.store.acknowledge(destination, through))

    @property
    def durable(self) -> bool:
        """Whether what the log holds outlives this process (not the in-memory store)."""
        return not isinstance(self.store, MemoryAuditStore)

    async def _append(
        self, record: AuditRecord, outbound: Outbound | None, also: AlsoWrite | None = None
    ) -> Appended:
        """`store.append` within the bound, through the breaker (see the module docstring)."""
        if not self.breaker.allow():
            raise AuditUnavailable("the audit store is failing (its circuit breaker is open)")
        pending = asyncio.ensure_future(self.store.append(record, outbound, also))
        try:
            async with asyncio.timeout(self.append_timeout_seconds):
                appended = await asyncio.shield(pending)
        except TimeoutError:
            self.breaker.failure(timeout=True)
            self._follow_ups.watch(record, pending, outbound)
            raise AuditUnavailable(
                f"the audit record was not durable within {self.append_timeout_seconds:g} s"
            ) from None
        except AuditOutcomeUnknown:
            self.breaker.failure()
            self._follow_ups.watch(
                record, pending, outbound
            )  # it may be durable: say it was not released
            raise
        except AuditUnavailable:
            self.breaker.failure()
            raise
        except asyncio.CancelledError:
            # The caller is gone (its deadline, or a cancel), so nothing will be released; the
            # append goes on, since a record on its way may be written all the same, and is
            # followed up like one that timed out.
            self.breaker.abandon()
            self._follow_ups.watch(record, pending, outbound)
            raise
        self.breaker.success()
        return appended

    async def _append_all(self, records: Sequence[AuditRecord]) -> list[Appended | BaseException]:
        """The store's appends of `records`, within one bound, through the breaker once: each
        one's `Appended` or exception (each handled as `_append` handles its one)."""
        if not self.breaker.allow():
            raise AuditUnavailable("the audit store is failing (its circuit breaker is open)")
        many = getattr(self.store, "append_many", None)
        pending: list[asyncio.Future[Appended]] = (
            many(records)
            if many is not None
            else [asyncio.ensure_future(self.store.append(record)) for record in records]
        )
        try:
            async with asyncio.timeout(self.append_timeout_seconds):
                outcomes: list[Appended | BaseException] = await asyncio.shield(
                    asyncio.gather(*pending, return_exceptions=True)
                )
        except TimeoutError:
            self.breaker.failure(timeout=True)
            self._watch_all(records, pending)
            raise AuditUnavailable(
                f"the audit records were not durable within {self.append_timeout_seconds:g} s"
            ) from None
        except asyncio.CancelledError:
            self.breaker.abandon()  # the caller is gone: followed up as if timed out
            self._watch_all(records, pending)
            raise
        if any(isinstance(o, BaseException) for o in outcomes):
            self.breaker.failure()
            self._watch_all(records, pending)  # those whose outcome is unknown
        else:
            self.breaker.success()
        return outcomes

    def _watch_all(
        self, records: Sequence[AuditRecord], pending: Sequence[asyncio.Future[Appended]]
    ) -> None:
        """Follow up (`FollowUps.watch`) each append not ended yet, or ended without an
        answer (AuditOutcomeUnknown): it may become, or be, durable."""
        for record, future in zip(records, pending, strict=True):
            if not future.done() or (
                not future.cancelled() and isinstance(future.exception(), AuditOutcomeUnknown)
            ):
                self._follow_ups.watch(record, future, None)

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
        if self._key is None:
            raise AuditUnavailable(
                "this audit log was opened to read and verify: it holds no signing key"
            )
        head = await self.read(self.store.head)
        self._since_checkpoint = 0
        signed_at = self._clock()
        checkpoint = sign_checkpoint(
            self.origin, head.size, head.root, self._key, self.key_name, signed_at=signed_at
        )
        if self.time_stamper is not None:
            token = await asyncio.to_thread(self.time_stamper, checkpoint.note.encode())
            checkpoint = dataclasses.replace(checkpoint, time_stamp=token)
        await self.read(lambda: self.store.add_checkpoint(checkpoint, signed_at))
        if self.observer is not None:
            self.observer.checkpoint(head.size, signed_at)
        for listener in self.checkpoint_listeners:
            listener(checkpoint)
        return checkpoint

    def cosign(self, body: str, witness_name: str, timestamp: int) -> Cosignature:
        """This gateway's cosignature, as witness `witness_name`, of another log's checkpoint
        (its audit key signs both; type 0x04 and "cosignature/v1" keep the two apart)."""
        if self._key is None:
            raise AuditUnavailable("this audit log holds no signing key: it cannot cosign")
        return cosign(body, self._key, witness_name, timestamp)

    async def checkpoint_if_grown(self) -> tuple[Checkpoint, bool]:
        """(the latest checkpoint, True) after signing one if the log grew since the latest
        signed one; (the latest, False) when it already covers the whole log."""
        latest = await self.latest_checkpoint()
        head = await self.read(self.store.head)
        if latest is not None and latest.size == head.size and latest.root == head.root:
            return latest, False
        return await self.checkpoint(), True

    def verify_note(self, checkpoint: Checkpoint) -> Checkpoint:
        """`checkpoint` parsed from its note and checked against this log's key under any of
        its names (the current one first); raise CheckpointError. Keeps its signing time."""
        problem: CheckpointError | None = None
        for name in self.key_names:
            try:
                parsed = verify_checkpoint(
                    checkpoint.note, self.public_key, name, origin=self.origin
                )
            except CheckpointError as exc:
                problem = problem or exc
                continue
            return dataclasses.replace(parsed, signed_at=checkpoint.signed_at)
        assert problem is not None
        raise problem

    async def prune(
        self,
        *,
        older_than: timedelta,
        operator: str,
        reason: str,
        gateway: str,
        region: str,
        now: datetime | None = None,
    ) -> Pruned | None:
        """Remove the records older than `older_than` (at least MIN_RETENTION); None if none are.

        (1) find the cut: the first record at or after the cutoff time
        (2) recompute the compact range at the cut from the stored rows (a broken log is not
            pruned: verify and investigate first)
        (3) sign a checkpoint of the log at exactly the cut: it vouches for what remains
        (4) record the prune itself in the log, and sign the head that includes that record
        (5) only then remove the records below the cut, leaving the marker
        """
        check_prune_request(older_than, operator, reason)
        if self._key is None:
            raise AuditUnavailable("pruning signs checkpoints: this log holds no signing key")
        when = now or self._clock()
        cut = await self.store.first_index_at_or_after(when - older_than)  # (1)
        marker = await self.store.pruned()
        first = marker.before if marker else 0
        if cut <= first:
            return None
        compact = await compact_at_cut(self.store, marker, cut)  # (2)
        at_cut = sign_checkpoint(  # (3)
            self.origin, cut, compact.root(), self._key, self.key_name, signed_at=when
        )
        await self.store.add_checkpoint(at_cut, when)
        await self.append(  # (4)
            prune_record(
                when,
                gateway=gateway,
                region=region,
                operator=operator,
                reason=reason,
                first=first,
                cut=cut,
            )
        )
        at_head = await self.checkpoint()
        log.warning(
            "audit log %s: %s removes records %d to %d (older than %s): %s",
            self.origin,
            operator,
            first,
            cut - 1,
            when - older_than,
            reason,
        )
        await self.store.prune(PruneMarker(cut, compact.to_bytes(), when, operator, reason))  # (5)
        return Pruned(first, cut, at_cut, at_head)

    async def _rows(self, start: int, end: int) -> list[StoredRow]:
        """One chunk of stored rows, within the read bound (a store frozen mid-way is not
        waited for)."""
        return await self.read(lambda: self.store.rows(start, end))

    async def latest_checkpoint(self) -> Checkpoint | None:
        checkpoints = await self.read(self.store.checkpoints)
        return checkpoints[-1] if checkpoints else None

    async def _tree(self, size: int, needed: int) -> MerkleTree:
        """The log's tree of `size` leaves, from the kept compact range of the largest size up
        to `needed` (the first size or leaf a proof is about: `_ranges`), else from the prune's
        marker or the first record; its compact range is kept for the next proof."""
        marker = await self.read(self.store.pruned)
        first = marker.before if marker is not None else 0
        known = self._ranges.at_or_below(min(needed, size), first)
        if known is not None:
            tree = MerkleTree.from_compact(known)
        elif marker is None:
            tree = MerkleTree()
        else:
            tree = MerkleTree.from_compact(CompactRange.from_bytes(marker.before, marker.compact))
        for start in range(tree.size, size, VERIFY_CHUNK):
            for row in await self._rows(start, min(size, start + VERIFY_CHUNK)):
                tree.append(row.leaf_hash)
        if tree.size != size:
            raise AuditUnavailable(
                f"the store returned {tree.size - first} of {size - first} records"
            )
        self._ranges.keep(tree.compact())
        return tree

    async def inclusion_proof(
        self, index: int, size: int | None = None
    ) -> tuple[list[bytes], int, bytes, bytes]:
        """(proof, tree size, root, leaf hash) for the record at `index` in a tree of `size`."""
        size = (await self.read(self.store.head)).size if size is None else size
        tree = await self._tree(size, index)
        return tree.inclusion_proof(index, size), size, tree.root(size), tree.node(0, index)

    async def consistency_proof(
        self, size1: int, size2: int | None = None
    ) -> tuple[list[bytes], int, bytes]:
        """(proof, second size, second root) that the tree of `size1` is a prefix."""
        size2 = (await self.read(self.store.head)).size if size2 is None else size2
        tree = await self._tree(size2, size1)
        return tree.consistency_proof(size1, size2), size2, tree.root(size2)

    async def verify(self, trusted: Checkpoint | None = None) -> Verification:
        """Recompute the log from its stored records and compare with every checkpoint
        (`verify_log`: what is checked, in order)."""
        return await verify_log(self, self._rows, trusted)
