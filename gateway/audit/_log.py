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
from collections.abc import Awaitable, Callable
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
from gateway.audit._merkle import CompactRange, MerkleTree, ProofError, leaf_hash
from gateway.audit._record import FIELD_GRAMMARS, AuditRecord, Outcome, is_case_id
from gateway.audit._store import (
    Appended,
    AuditStore,
    MemoryAuditStore,
    Outbound,
    Pending,
    PruneMarker,
    StoredRow,
)
from gateway.audit.errors import AuditIntegrityError, AuditOutcomeUnknown, AuditUnavailable
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

VERIFY_CHUNK = 10_000  # rows read at a time while verifying
FOLLOW_UP_TRIES = 10  # a follow-up after a commit that got no answer: tries, a second apart


APPEND_TIMEOUT_SECONDS = 2.0  # an append not durable by then is refused (AUDIT_UNAVAILABLE)
# A read (oversight listings, a report's checks) may scan: bounded as PostgreSQL's statements are.
READ_TIMEOUT_SECONDS = 10.0
NOT_RELEASED = "AUDIT_UNAVAILABLE"  # the reason of the follow-up to a late allowed record
MIN_RETENTION = timedelta(days=180)  # network logs are kept at least six months (CSL Art. 21)


@dataclass(frozen=True, slots=True)
class Pruned:
    first: int  # the first record removed
    cut: int  # records below this index are gone
    at_cut: Checkpoint  # signed before the removal: vouches for what remains
    at_head: Checkpoint  # the head, including the record of the prune


@dataclass(frozen=True, slots=True)
class Verification:
    intact: bool
    records_checked: int
    checkpoints_checked: int
    first_bad_index: int  # -1 when intact
    problem: str  # "" when intact
    latest: Checkpoint | None


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
        self._late: set[asyncio.Task[None]] = set()  # follow-ups of appends that timed out
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
        self._since_checkpoint = 0
        self._checkpointing: asyncio.Task[None] | None = None
        self._timer: asyncio.Task[None] | None = None
        self.observer: AuditObserver | None = None

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
        if self._late:  # appends that timed out: their follow-ups are written before closing
            await asyncio.wait(list(self._late), timeout=self.append_timeout_seconds)
        if self._key is not None:
            try:
                await self.checkpoint()
            except AuditUnavailable as exc:
                log.warning("no final checkpoint: %s", exc)
        await self.store.close()

    async def append(self, record: AuditRecord, outbound: Outbound | None = None) -> Appended:
        """Make `record` durable (with `outbound`, the message its access owes another region,
        in the same transaction); raise `AuditUnavailable` if it is not within the bound."""
        try:
            appended = await self._append(record, outbound)
        except AuditUnavailable:
            if self.observer is not None:
                self.observer.audit_append(False)
            raise
        if self.observer is not None:
            self.observer.audit_append(True)
        if access_log.isEnabledFor(logging.INFO):
            # One structured event per audited access (fields: docs/logging.md); the values are
            # the record's own, escaped and redacted by the log handler (gateway/logs.py).
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
        return appended

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

    async def _append(self, record: AuditRecord, outbound: Outbound | None) -> Appended:
        """`store.append` within the bound, through the breaker (see the module docstring)."""
        if not self.breaker.allow():
            raise AuditUnavailable("the audit store is failing (its circuit breaker is open)")
        pending = asyncio.ensure_future(self.store.append(record, outbound))
        try:
            async with asyncio.timeout(self.append_timeout_seconds):
                appended = await asyncio.shield(pending)
        except TimeoutError:
            self.breaker.failure(timeout=True)
            self._follow_up(record, pending, outbound)
            raise AuditUnavailable(
                f"the audit record was not durable within {self.append_timeout_seconds:g} s"
            ) from None
        except AuditOutcomeUnknown:
            self.breaker.failure()
            self._follow_up(record, pending, outbound)  # it may be durable: say it was not released
            raise
        except AuditUnavailable:
            self.breaker.failure()
            raise
        except asyncio.CancelledError:
            # The caller is gone (its deadline, or a cancel), so nothing will be released; the
            # append goes on, since a record on its way may be written all the same, and is
            # followed up like one that timed out.
            self.breaker.abandon()
            self._follow_up(record, pending, outbound)
            raise
        self.breaker.success()
        return appended

    def _follow_up(
        self,
        record: AuditRecord,
        pending: asyncio.Future[Appended],
        outbound: Outbound | None = None,
    ) -> None:
        """The append of `record` timed out (the caller was refused) or its caller was
        cancelled; if the record still becomes durable and claims an allowed access, say that
        it was not released."""

        def done(future: asyncio.Future[Appended]) -> None:
            if future.cancelled():
                return
            failed = future.exception()
            if failed is not None and not isinstance(failed, AuditOutcomeUnknown):
                return  # not stored: nothing claims an answer
            if failed is None:
                self.breaker.success()  # the store answered after all
            if record.outcome is not Outcome.ALLOWED:
                return  # a refusal released nothing: the late record is true as it is
            follow_up = dataclasses.replace(
                record, time=self._clock(), outcome=Outcome.FAILED, reason=NOT_RELEASED, fields=()
            )
            # Stored late (its index known), or perhaps stored (a commit that got no answer):
            # either way the request's last record must say that nothing was released.
            late = future.result() if failed is None else None
            task = asyncio.ensure_future(
                self._append_follow_up(follow_up, late, outbound is not None)
            )
            self._late.add(task)
            task.add_done_callback(self._late.discard)

        pending.add_done_callback(done)

    async def _append_follow_up(
        self, record: AuditRecord, late: Appended | None, owed: bool
    ) -> None:
        if late is None:
            await self._append_follow_up_unknown(record)
            return
        if owed:  # its owner must not be told of an access that was not released
            try:
                withdrawn = await self.store.withdraw(late.index)
            except AuditUnavailable as exc:
                withdrawn = False
                log.warning(
                    "the report of audit record %d could not be withdrawn: %s", late.index, exc
                )
            if not withdrawn:
                log.warning(
                    "audit record %d's report had left for its owner before it was withdrawn: "
                    "the owner records an access that was not released",
                    late.index,
                )
        try:
            appended = await self.store.append(record)
        except AuditUnavailable as exc:
            log.error(  # noqa: TRY400 - the cause is the message; no traceback to show
                "audit record %d claims an answer that was not released, and its follow-up "
                "could not be stored: %s",
                late.index,
                exc,
            )
            return
        log.warning(
            "audit record %d became durable after its answer was refused: record %d says it "
            "was not released",
            late.index,
            appended.index,
        )

    async def _append_follow_up_unknown(self, record: AuditRecord) -> None:
        """A commit got no answer: its record may be durable. The follow-up (true either way:
        nothing was released for the request) is written once the store takes appends again,
        tried FOLLOW_UP_TRIES times a second apart (the log's close waits for them a while)."""
        for attempt in range(FOLLOW_UP_TRIES):
            try:
                appended = await self.store.append(record)
            except AuditUnavailable as exc:
                if attempt + 1 < FOLLOW_UP_TRIES:
                    await asyncio.sleep(1.0)
                    continue
                log.error(  # noqa: TRY400 - the cause is the message; no traceback to show
                    "the audit record of request %s may have become durable although its answer "
                    "was not released, and the record saying so could not be stored: %s",
                    record.request_id,
                    exc,
                )
                return
            log.warning(
                "the audit commit of request %s got no answer: record %d says its answer was "
                "not released",
                record.request_id,
                appended.index,
            )
            return

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
        await self.read(lambda: self.store.add_checkpoint(checkpoint, signed_at))
        if self.observer is not None:
            self.observer.checkpoint(head.size, signed_at)
        return checkpoint

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
        if older_than < MIN_RETENTION:
            raise ValueError(
                f"audit records are kept at least {MIN_RETENTION.days} days (Cybersecurity Law, Art. 21)"
            )
        if not operator.strip() or not reason.strip():
            raise ValueError("a prune names the operator who ordered it and the reason")
        if not is_case_id(reason) or not FIELD_GRAMMARS["caller_operator"](operator):
            # recorded raw, not as a digest: the prune's record must say who and why
            raise ValueError(
                "a prune's operator and reason are at most 128 printable characters each, "
                "with no citizen id"
            )
        if self._key is None:
            raise AuditUnavailable("pruning signs checkpoints: this log holds no signing key")
        when = now or self._clock()
        cut = await self.store.first_index_at_or_after(when - older_than)  # (1)
        marker = await self.store.pruned()
        first = marker.before if marker else 0
        if cut <= first:
            return None
        compact = CompactRange.from_bytes(first, marker.compact) if marker else CompactRange()
        for start in range(first, cut, VERIFY_CHUNK):  # (2)
            for row in await self.store.rows(start, min(cut, start + VERIFY_CHUNK)):
                if row.index != compact.size or leaf_hash(row.canonical) != row.leaf_hash:
                    raise AuditIntegrityError(
                        f"record {compact.size} does not verify: the log is not pruned"
                    )
                compact.append(row.leaf_hash)
                if compact.root() != row.root:
                    raise AuditIntegrityError(
                        f"record {row.index} does not verify: the log is not pruned"
                    )
        if compact.size != cut:
            raise AuditIntegrityError(f"record {compact.size} is missing: the log is not pruned")
        at_cut = sign_checkpoint(  # (3)
            self.origin, cut, compact.root(), self._key, self.key_name, signed_at=when
        )
        await self.store.add_checkpoint(at_cut, when)
        await self.append(  # (4)
            AuditRecord(
                time=when,
                gateway=gateway,
                region=region,
                rpc="Audit.Prune",
                request_id="",
                caller_agency="",
                caller_operator=operator,
                caller_region=region,
                provider_region=region,
                dataset="",
                purpose="",
                case_id=reason,
                subject="",
                fields=(),
                outcome=Outcome.ALLOWED,
                reason="",
                cache_hit=False,
                latency_us=0,
                sealed_digest="",
                registry_version=0,
                agreement_id=f"removed records {first} to {cut - 1}",
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

    async def _tree(self, size: int) -> MerkleTree:
        marker = await self.read(self.store.pruned)
        if marker is None:
            tree = MerkleTree()
        else:
            tree = MerkleTree.from_compact(CompactRange.from_bytes(marker.before, marker.compact))
        for start in range(tree.size, size, VERIFY_CHUNK):
            for row in await self._rows(start, min(size, start + VERIFY_CHUNK)):
                tree.append(row.leaf_hash)
        if tree.size != size:
            raise AuditUnavailable(
                f"the store returned {tree.size - tree.first} of {size - tree.first} records"
            )
        return tree

    async def inclusion_proof(
        self, index: int, size: int | None = None
    ) -> tuple[list[bytes], int, bytes, bytes]:
        """(proof, tree size, root, leaf hash) for the record at `index` in a tree of `size`."""
        size = (await self.read(self.store.head)).size if size is None else size
        tree = await self._tree(size)
        return tree.inclusion_proof(index, size), size, tree.root(size), tree.node(0, index)

    async def consistency_proof(
        self, size1: int, size2: int | None = None
    ) -> tuple[list[bytes], int, bytes]:
        """(proof, second size, second root) that the tree of `size1` is a prefix."""
        size2 = (await self.read(self.store.head)).size if size2 is None else size2
        tree = await self._tree(size2)
        return tree.consistency_proof(size1, size2), size2, tree.root(size2)

    async def verify(self, trusted: Checkpoint | None = None) -> Verification:
        """Recompute the log from its stored records and compare with every checkpoint.

        (1) every stored and trusted checkpoint is signed by this log's audit key
        (2) records are contiguous from index 0 (or from a retention prune, whose marker a
            checkpoint signed before the removal vouches for), each in canonical form, each leaf
            hash and each stored root what the records before it give
        (3) every checkpoint's size is covered and its root is the recomputed root at that size
        (4) the columns the store queries by say what the records say
        """
        checkpoints: list[Checkpoint] = []
        for stored in [
            *await self.read(self.store.checkpoints),
            *([trusted] if trusted else []),
        ]:  # (1)
            try:
                checkpoints.append(self.verify_note(stored))
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
        marker = await self.read(self.store.pruned)
        first = marker.before if marker else 0
        try:
            compact = CompactRange.from_bytes(first, marker.compact) if marker else CompactRange()
        except ProofError:
            return Verification(
                False,
                0,
                len(checkpoints),
                first,
                f"the prune marker at {first} is malformed",
                checkpoints[-1] if checkpoints else None,
            )
        if marker is not None and not any(
            c.size == first and c.root == compact.root() for c in checkpoints
        ):
            return Verification(
                False,
                0,
                len(checkpoints),
                first,
                f"the log was pruned below {first} but no signed checkpoint vouches for what remained",
                checkpoints[-1] if checkpoints else None,
            )
        checkpoints = [
            c for c in checkpoints if c.size >= first
        ]  # older ones covered removed records
        wanted = {c.size for c in checkpoints}
        roots: dict[int, bytes] = {}
        head = await self.read(self.store.head)
        span = max([head.size, *wanted])
        if first in wanted:
            roots[first] = compact.root()
        index = first
        problem = ""
        for start in range(first, span, VERIFY_CHUNK):  # (2)
            for row in await self._rows(start, min(span, start + VERIFY_CHUNK)):
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
            return Verification(False, index - first, len(checkpoints), index, problem, latest)
        covered = first  # records up to here agree with a signed checkpoint
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
        return Verification(True, index - first, len(checkpoints), -1, "", latest)
