"""The audit log over the in-memory store: the store contract, checkpoints, proofs, fail
closed, and tampering of every kind detected with the index named."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime

import pytest
from audit_contract import check_outbox_contract, check_store_contract, make_record
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.audit._checkpoint import CheckpointError, sign_checkpoint, verify_checkpoint
from gateway.audit._log import AuditLog
from gateway.audit._merkle import leaf_hash
from gateway.audit._record import AuditRecord, Outcome, pseudonymize
from gateway.audit._store import (
    AlsoWrite,
    Appended,
    AuditQuery,
    MemoryAuditStore,
    Outbound,
    StoredRow,
    TreeHead,
)
from gateway.audit.errors import AuditOutcomeUnknown, AuditUnavailable
from gateway.breaker import CircuitBreaker

ORIGIN = "audit.test/510000"


async def test_memory_store_meets_the_contract() -> None:
    store = MemoryAuditStore()
    await check_store_contract(lambda: store)


async def test_memory_store_keeps_the_outbox() -> None:
    store = MemoryAuditStore()
    await check_outbox_contract(lambda: store)


async def _log(n: int, *, every: int = 1000) -> tuple[AuditLog, MemoryAuditStore]:
    store = MemoryAuditStore()
    log = AuditLog(
        store,
        origin=ORIGIN,
        key=ed25519.Ed25519PrivateKey.generate(),
        key_name="audit-510000",
        checkpoint_every_records=every,
    )
    await log.open()
    for i in range(n):
        await log.append(make_record(i))
        await asyncio.sleep(0)  # let a checkpoint the append started run, as a server's loop would
    await asyncio.sleep(0.01)
    return log, store


async def test_checkpoints_every_n_records_and_on_close() -> None:
    log, store = await _log(25, every=10)
    sizes = [c.size for c in await store.checkpoints()]
    assert 10 in sizes
    assert 20 in sizes
    await log.close()
    assert (await store.checkpoints())[-1].size == 25
    cp = (await store.checkpoints())[-1]
    verify_checkpoint(cp.note, log.public_key, "audit-510000", origin=ORIGIN)


async def test_an_append_that_cannot_be_made_durable_raises_audit_unavailable() -> None:
    log, store = await _log(3)
    store.available = False
    with pytest.raises(AuditUnavailable):
        await log.append(make_record(3))
    store.available = True
    assert (await log.append(make_record(3))).index == 3
    await log.close()


class FrozenStore(MemoryAuditStore):
    """A store whose appends hang while `frozen` (a database stopped with SIGSTOP) and complete
    once thawed: what was sent before the freeze becomes durable late."""

    def __init__(self) -> None:
        super().__init__()
        self.thawed = asyncio.Event()
        self.thawed.set()
        self.calls = 0

    async def append(
        self, record: AuditRecord, outbound: Outbound | None = None, also: AlsoWrite | None = None
    ) -> Appended:
        self.calls += 1
        await self.thawed.wait()
        return await super().append(record, outbound, also)

    async def head(self) -> TreeHead:
        self.calls += 1
        await self.thawed.wait()
        return await super().head()


async def _frozen_log(timeout: float = 0.05) -> tuple[AuditLog, FrozenStore]:
    store = FrozenStore()
    log = AuditLog(
        store,
        origin=ORIGIN,
        key=ed25519.Ed25519PrivateKey.generate(),
        key_name="audit-510000",
        append_timeout_seconds=timeout,
        read_timeout_seconds=timeout,
        breaker=CircuitBreaker(failure_threshold=2, open_seconds=0.2, name="audit store"),
    )
    await log.open()
    return log, store


async def test_a_frozen_store_is_refused_within_the_bound_then_not_called() -> None:
    log, store = await _frozen_log()
    store.thawed.clear()
    for i in range(2):
        async with asyncio.timeout(5):  # the bound (0.05 s) answers, not this
            with pytest.raises(AuditUnavailable):
                await log.append(make_record(i))
    assert log.breaker.state == "open"
    assert log.breaker.timeouts == 2
    with pytest.raises(AuditUnavailable):
        await log.append(make_record(2))
    assert store.calls == 2, "the store is not called while its breaker is open"
    store.thawed.set()
    await asyncio.sleep(0.25)  # open_seconds: the next append is the half-open trial
    assert (await log.append(make_record(3))).index >= 2
    assert log.breaker.state == "closed"
    await log.close()


async def test_an_allowed_record_whose_caller_was_cancelled_is_followed_by_not_released() -> None:
    log, store = await _frozen_log(timeout=60)
    store.thawed.clear()
    record = make_record(1)
    waiting = asyncio.ensure_future(log.append(record))
    await asyncio.sleep(0.01)
    waiting.cancel()  # the caller's deadline: its answer is never released
    with pytest.raises(asyncio.CancelledError):
        await waiting
    store.thawed.set()  # the record was on its way: it is stored all the same
    await asyncio.sleep(0.05)
    await log.close()
    stored = [(r.outcome, r.reason) for _, r in await store.query(AuditQuery(limit=100))]
    assert stored == [(Outcome.ALLOWED, ""), (Outcome.FAILED, "AUDIT_UNAVAILABLE")]


async def test_a_read_of_a_frozen_store_is_bounded_and_shares_the_breaker() -> None:
    log, store = await _frozen_log()
    assert (await log.read(store.head)).size == 0
    store.thawed.clear()
    for _ in range(2):
        with pytest.raises(AuditUnavailable, match="did not answer"):
            await log.read(store.head)
    assert log.breaker.state == "open"
    calls = store.calls
    with pytest.raises(AuditUnavailable, match="circuit breaker is open"):
        await log.append(make_record(1))  # appends and reads share one breaker
    assert store.calls == calls
    store.thawed.set()
    await log.close()


async def test_an_allowed_record_durable_after_its_refusal_is_followed_by_not_released() -> None:
    log, store = await _frozen_log()
    store.thawed.clear()
    allowed, denied = make_record(1), make_record(2, outcome=Outcome.DENIED)
    for record in (allowed, denied):
        with pytest.raises(AuditUnavailable):
            await log.append(record)
    store.thawed.set()  # the database comes back: both late records are stored
    await asyncio.sleep(0.05)
    await log.close()
    stored = [r for _, r in await store.query(AuditQuery(limit=100))]
    by_request: dict[str, list[tuple[Outcome, str, tuple[str, ...]]]] = {}
    for r in stored:
        by_request.setdefault(r.request_id, []).append((r.outcome, r.reason, r.fields))
    assert by_request[allowed.request_id] == [
        (Outcome.ALLOWED, "", allowed.fields),
        (Outcome.FAILED, "AUDIT_UNAVAILABLE", ()),  # the answer was not released
    ]
    assert by_request[denied.request_id] == [
        (Outcome.DENIED, "FIELD_NOT_ALLOWED", ("name", "status"))
    ]


async def test_the_report_of_an_answer_never_released_is_withdrawn_from_the_outbox() -> None:
    """A hit's record (carrying its report to the owner) became durable after its caller was
    refused: the follow-up says the answer was not released, and the owner is not told of it;
    a report that went out in time stays."""
    log, store = await _frozen_log()
    kept = await log.append(make_record(0), Outbound("330000", b'{"kept":1}'))
    store.thawed.clear()
    with pytest.raises(AuditUnavailable):
        await log.append(make_record(1), Outbound("330000", b'{"late":1}'))
    store.thawed.set()
    await asyncio.sleep(0.05)
    await log.close()
    assert [p.index for p in await store.outbox("330000", 10)] == [kept.index]
    outcomes = [(r.request_id, r.outcome) for _, r in await store.query(AuditQuery(limit=10))]
    assert outcomes[-1] == (make_record(1).request_id, Outcome.FAILED)


def _edit(record: AuditRecord, **changes: object) -> bytes:
    return dataclasses.replace(record, **changes).canonical  # type: ignore[arg-type]


TAMPERING = {
    "one field changed (leaf hash left as it was)": (
        lambda rows: [
            r
            if r.index != 12
            else dataclasses.replace(
                r, canonical=_edit(AuditRecord.from_canonical(r.canonical), purpose="MED-REG")
            )
            for r in rows
        ],
        12,
        "changed after it was written",
    ),
    "one field changed, leaf hash recomputed too": (
        lambda rows: [
            r
            if r.index != 12
            else dataclasses.replace(
                r,
                canonical=(
                    c := _edit(AuditRecord.from_canonical(r.canonical), outcome=Outcome.DENIED)
                ),
                leaf_hash=leaf_hash(c),
            )
            for r in rows
        ],
        12,
        "does not follow the records before it",
    ),
    "a row deleted": (lambda rows: [r for r in rows if r.index != 7], 7, "record 7 is missing"),
    "two rows swapped": (
        lambda rows: [
            dataclasses.replace(rows[9], index=4, root=rows[4].root)
            if r.index == 4
            else dataclasses.replace(rows[4], index=9, root=rows[9].root)
            if r.index == 9
            else r
            for r in rows
        ],
        4,
        "does not follow the records before it",
    ),
    "the tail truncated": (lambda rows: rows[:20], 20, "record 20 is missing"),
    "not canonical any more": (
        lambda rows: [
            r
            if r.index != 5
            else dataclasses.replace(r, canonical=r.canonical.replace(b'"v":1', b'"v": 1'))
            for r in rows
        ],
        5,
        "not a canonical audit record",
    ),
}


@pytest.mark.parametrize("name", list(TAMPERING))
async def test_tampering_is_detected_and_the_index_named(name: str) -> None:
    tamper, index, problem = TAMPERING[name]
    log, store = await _log(30)
    await log.checkpoint()
    assert (await log.verify()).intact
    store.tamper(tamper(await store.rows(0, 30)))  # type: ignore[no-untyped-call]
    result = await log.verify()
    assert not result.intact
    assert result.first_bad_index == index, result.problem
    assert problem in result.problem


async def test_rewriting_every_later_root_still_contradicts_the_checkpoint() -> None:
    log, store = await _log(30, every=10)  # checkpoints at 10, 20
    rows = await store.rows(0, 30)
    from gateway.audit._merkle import CompactRange

    compact = CompactRange()
    forged: list[StoredRow] = []
    for row in rows:
        canonical = (
            _edit(AuditRecord.from_canonical(row.canonical), case_id="FORGED")
            if row.index == 15
            else row.canonical
        )
        compact.append(leaf_hash(canonical))
        forged.append(StoredRow(row.index, canonical, leaf_hash(canonical), compact.root()))
    store.tamper(forged)
    result = await log.verify()
    assert not result.intact
    assert result.first_bad_index == 10  # the first record no matching checkpoint covers
    assert "root signed for size 20" in result.problem


async def test_a_checkpoint_not_signed_by_the_audit_key_is_refused() -> None:
    log, store = await _log(5)
    head = await store.head()
    forged = sign_checkpoint(
        ORIGIN, head.size, head.root, ed25519.Ed25519PrivateKey.generate(), "audit-510000"
    )
    result = await log.verify(trusted=forged)
    assert not result.intact
    assert "does not verify" in result.problem or "not signed" in result.problem
    with pytest.raises(CheckpointError, match="not signed by audit-510000"):
        verify_checkpoint(forged.note, log.public_key, "audit-510000")


@pytest.mark.parametrize("size", ["²", "٣", "１2", "-1", "01"])
async def test_a_checkpoint_whose_size_is_not_ascii_decimal_is_refused(size: str) -> None:
    """A size of digits `int()` cannot read (or reads as another spelling of a number) is
    refused for what it is, before the signature is looked at: checkpoints come from other
    gateways and witnesses."""
    log, _store = await _log(3)
    good = await log.checkpoint()
    origin, _, rest = good.note.partition("\n")
    _, _, after = rest.partition("\n")
    note = f"{origin}\n{size}\n{after}"
    with pytest.raises(CheckpointError, match="the tree size is not a decimal number"):
        verify_checkpoint(note, log.public_key, "audit-510000")


async def test_a_trusted_checkpoint_larger_than_the_log_shows_truncation() -> None:
    log, store = await _log(12)
    kept = await log.checkpoint()
    store.tamper((await store.rows(0, 12))[:8])
    result = await log.verify(trusted=kept)
    assert not result.intact
    assert result.first_bad_index == 8


def test_pseudonyms_are_keyed_and_raw_ids_are_refused() -> None:
    assert pseudonymize("110105194912310021", b"a" * 32) != pseudonymize(
        "110105194912310021", b"b" * 32
    )
    with pytest.raises(ValueError, match="never a raw id"):
        dataclasses.replace(make_record(0), subject="110105194912310021")
    with pytest.raises(ValueError, match="at least 16 bytes"):
        pseudonymize("x", b"short")


def test_canonical_encoding_round_trips_and_is_stable() -> None:
    record = make_record(3)
    assert AuditRecord.from_canonical(record.canonical) == record
    assert record.canonical.startswith(
        b'{"agreement_id":"CY-SI-2026","cache_hit":false,"caller_agency":"sc.hrss"'
    )
    assert b'"time":"2026-11-21T08:00:03.000000Z"' in record.canonical
    with pytest.raises(ValueError, match="not in canonical form"):
        AuditRecord.from_canonical(record.canonical.replace(b",", b", ", 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        dataclasses.replace(record, time=datetime(2026, 1, 1))
    assert record.time.tzinfo is UTC


async def test_a_checkpoint_carries_its_signing_time_and_is_named_after_its_log() -> None:
    signed = datetime(2026, 12, 6, 21, 0, 0, 123456, tzinfo=UTC)
    store = MemoryAuditStore()
    log = AuditLog(
        store,
        origin=ORIGIN,
        key=ed25519.Ed25519PrivateKey.generate(),
        key_name=ORIGIN,
        clock=lambda: signed,
    )
    await log.append(make_record(0))
    checkpoint = await log.checkpoint()
    assert checkpoint.signed_at == signed
    latest = await log.latest_checkpoint()
    assert latest is not None
    assert latest.signed_at == signed
    verification = await log.verify()
    assert verification.intact, verification.problem
    assert verification.latest is not None
    assert verification.latest.signed_at == signed
    assert f"\u2014 {ORIGIN} " in checkpoint.note  # the signature line names the log


async def test_checkpoints_signed_under_the_former_key_name_still_verify() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    store = MemoryAuditStore()
    before = AuditLog(store, origin=ORIGIN, key=key, key_name="audit-510000")
    await before.append(make_record(0))
    await before.checkpoint()  # signed as "audit-510000", as gateways did before
    after = AuditLog(
        store, origin=ORIGIN, key=key, key_name=ORIGIN, former_key_names=("audit-510000",)
    )
    await after.append(make_record(1))
    await after.checkpoint()  # signed as the origin
    result = await after.verify()
    assert result.intact, result.problem
    assert result.checkpoints_checked == 2
    # Without the former name, the old note is not this log's key's: the break is reported.
    strict = AuditLog(store, origin=ORIGIN, key=key, key_name=ORIGIN)
    refused = await strict.verify()
    assert not refused.intact
    assert f"not signed by {ORIGIN}" in refused.problem


async def test_checkpoint_if_grown_signs_only_when_the_log_grew() -> None:
    log, _ = await _log(3)
    first, signed = await log.checkpoint_if_grown()
    assert (first.size, signed) == (3, True)
    again, signed = await log.checkpoint_if_grown()
    assert (again.note, signed) == (first.note, False)
    await log.append(make_record(3))
    grown, signed = await log.checkpoint_if_grown()
    assert (grown.size, signed) == (4, True)


async def test_oversight_reads_of_a_frozen_store_are_bounded_too() -> None:
    """Signing a checkpoint, a proof and a verification read the store within the read bound
    (what VerifyAudit, GetProof and SignCheckpoint call): a frozen store fails them, it does not
    hold them."""
    log, store = await _frozen_log()
    await log.append(make_record(0))
    store.thawed.clear()
    async with asyncio.timeout(5):  # the bound (0.05 s) answers, not this
        with pytest.raises(AuditUnavailable):
            await log.checkpoint()
        with pytest.raises(AuditUnavailable):
            await log.checkpoint_if_grown()
        with pytest.raises(AuditUnavailable):
            await log.inclusion_proof(0)
        with pytest.raises(AuditUnavailable):
            await log.verify()
    store.thawed.set()
    await asyncio.sleep(0.25)  # the breaker's open_seconds
    assert (await log.verify()).intact
    await log.close()


class UnansweredCommitStore(MemoryAuditStore):
    """A store whose first commit lands but whose answer is lost (the connection broke while
    the COMMIT was on its way): the append raises AuditOutcomeUnknown, the record is durable."""

    def __init__(self) -> None:
        super().__init__()
        self.lose_next_answer = True

    async def append(
        self, record: AuditRecord, outbound: Outbound | None = None, also: AlsoWrite | None = None
    ) -> Appended:
        appended = await super().append(record, outbound, also)
        if self.lose_next_answer:
            self.lose_next_answer = False
            raise AuditOutcomeUnknown("the commit got no answer")
        return appended


async def test_an_allowed_record_whose_commit_got_no_answer_is_followed_by_not_released() -> None:
    store = UnansweredCommitStore()
    log = AuditLog(store, origin=ORIGIN, key=ed25519.Ed25519PrivateKey.generate(),
                   key_name="audit-510000")  # fmt: skip
    await log.open()
    with pytest.raises(AuditUnavailable):  # the caller is refused: nothing released
        await log.append(make_record(1))
    await asyncio.sleep(0.05)
    await log.close()
    stored = [(r.outcome, r.reason) for _, r in await store.query(AuditQuery(limit=100))]
    assert stored == [(Outcome.ALLOWED, ""), (Outcome.FAILED, "AUDIT_UNAVAILABLE")]


async def test_a_batch_is_appended_as_its_records_one_by_one() -> None:
    """`append_all` stores what `append` of each stores, in order, and counts each record
    towards the next checkpoint; an empty batch appends nothing."""
    records = [make_record(i) for i in range(7)]
    one_by_one, store1 = await _log(0, every=5)
    for record in records:
        await one_by_one.append(record)
    batched, store2 = await _log(0, every=5)
    assert await batched.append_all([]) == []
    appended = await batched.append_all(records)
    assert [a.index for a in appended] == list(range(7))
    assert await store2.rows(0, 7) == await store1.rows(0, 7)
    await asyncio.sleep(0.01)
    # the 5th record started a checkpoint (signed when it runs: of the head then)
    assert len(await store2.checkpoints()) == len(await store1.checkpoints()) == 1
    await one_by_one.close()
    await batched.close()


async def test_a_batch_the_store_cannot_take_is_refused_and_late_allowed_records_followed_up() -> (
    None
):
    log, store = await _frozen_log()
    store.thawed.clear()
    allowed, denied = make_record(1), make_record(2, outcome=Outcome.DENIED)
    async with asyncio.timeout(5):  # the bound (0.05 s) answers, not this
        with pytest.raises(AuditUnavailable, match="not durable within"):
            await log.append_all([allowed, denied])
    assert log.breaker.timeouts == 1  # one bound for the batch
    store.thawed.set()  # the database comes back: both late records are stored
    await asyncio.sleep(0.05)
    stored = [(r.request_id, r.outcome, r.reason) for _, r in await store.query(AuditQuery())]
    assert sorted(stored) == sorted(
        [
            (allowed.request_id, Outcome.ALLOWED, ""),
            (denied.request_id, Outcome.DENIED, "FIELD_NOT_ALLOWED"),
            (allowed.request_id, Outcome.FAILED, "AUDIT_UNAVAILABLE"),  # not released
        ]
    )
    store.available = False
    with pytest.raises(AuditUnavailable, match="switched off"):
        await log.append_all([make_record(3)])
    await log.close()


async def test_an_empty_batch_asks_nothing_of_the_store_or_its_breaker() -> None:
    """A batch of retried reports only (nothing new to record) is answered while the store's
    breaker is open, as before the batch append."""
    log, store = await _frozen_log()
    store.thawed.clear()
    for i in range(2):
        with pytest.raises(AuditUnavailable):
            await log.append(make_record(i))
    assert log.breaker.state == "open"
    assert await log.append_all([]) == []
    store.thawed.set()
    await log.close()
