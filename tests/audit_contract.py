"""What every `AuditStore` must do, as one async checklist each store's tests run.

Usage in a store's test module::

    async def test_contract(tmp_path):
        await check_store_contract(lambda: SqliteAuditStore(tmp_path / "audit.db"))

`make_store` is called more than once and must return stores over the SAME storage (a reopen).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.audit._checkpoint import sign_checkpoint
from gateway.audit._log import AuditLog
from gateway.audit._merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from gateway.audit._record import AuditRecord, Outcome, pseudonymize
from gateway.audit._store import AuditQuery, AuditStore, Outbound

KEY = b"k" * 32
T0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)


def make_record(
    i: int, *, subject: str = "110105194912310021", outcome: Outcome = Outcome.ALLOWED
) -> AuditRecord:
    return AuditRecord(
        time=T0 + timedelta(seconds=i),
        gateway="gw-510000-a",
        region="510000",
        rpc="/tongban.v1.DataExchange/Query",
        request_id=f"req-{i}",
        caller_agency="sc.hrss" if i % 2 else "sc.hsa",
        caller_operator="operator-7",
        caller_region="510000",
        provider_region="500000" if i % 3 else "330000",
        dataset="si.participation",
        purpose="SI-TRANSFER",
        case_id=f"CASE-{i}",
        subject=pseudonymize(subject, KEY),
        fields=("name", "status"),
        outcome=outcome,
        reason="" if outcome is Outcome.ALLOWED else "FIELD_NOT_ALLOWED",
        cache_hit=bool(i % 4 == 0),
        latency_us=1000 + i,
        sealed_digest="ab" * 32,
        registry_version=3,
        agreement_id="CY-SI-2026",
    )


async def check_store_contract(make_store: Callable[[], AuditStore]) -> None:
    store = make_store()
    await store.open()
    head = await store.head()
    assert head.size == 0
    # Concurrent appends: all durable, indices 0..n-1 without gaps, in commit order.
    records = [make_record(i) for i in range(50)]
    appended = await asyncio.gather(*(store.append(r) for r in records))
    assert sorted(a.index for a in appended) == list(range(50))
    rows = await store.rows(0, 50)
    assert [r.index for r in rows] == list(range(50))
    by_index = {a.index: r for a, r in zip(appended, records, strict=True)}
    tree = MerkleTree()
    for row in rows:
        assert row.canonical == by_index[row.index].canonical
        assert row.leaf_hash == leaf_hash(row.canonical)
        tree.append(row.leaf_hash)
        assert row.root == tree.root()
    head = await store.head()
    assert (head.size, head.root) == (50, tree.root())
    assert [r.index for r in await store.rows(10, 13)] == [10, 11, 12]
    assert await store.rows(60, 70) == []
    # Queries: filters and paging.
    subject = pseudonymize("110105194912310021", KEY)
    everything = await store.query(AuditQuery(subject=subject, limit=1000))
    assert [i for i, _ in everything] == list(range(50))
    page = await store.query(AuditQuery(caller_agency="sc.hrss", limit=5))
    assert [i for i, _ in page] == [1, 3, 5, 7, 9]
    page2 = await store.query(AuditQuery(caller_agency="sc.hrss", after_index=9, limit=3))
    assert [i for i, _ in page2] == [11, 13, 15]
    window = await store.query(
        AuditQuery(since=T0 + timedelta(seconds=10), until=T0 + timedelta(seconds=12), limit=100)
    )
    assert [i for i, _ in window] == [10, 11]
    assert await store.query(AuditQuery(subject=pseudonymize("other", KEY))) == []
    assert (await store.query(AuditQuery(provider_region="330000", limit=2)))[1][1] == by_index[3]
    # Checkpoints survive, in size order.
    key = ed25519.Ed25519PrivateKey.generate()
    cp = sign_checkpoint("audit.test/510000", head.size, head.root, key, "audit-510000")
    await store.add_checkpoint(cp, T0)
    assert [c.size for c in await store.checkpoints()] == [50]
    # The signing time is kept beside the note, and read back (it is not in the signed text).
    assert [c.signed_at for c in await store.checkpoints()] == [T0]
    await store.close()
    # Reopen: everything is still there and appends continue the same tree.
    again = make_store()
    await again.open()
    assert (await again.head()).root == head.root
    assert (await again.checkpoints())[0].note == cp.note
    extra = await again.append(make_record(50, outcome=Outcome.DENIED))
    assert extra.index == 50
    tree.append(extra.leaf_hash)
    assert (await again.head()).root == tree.root()
    # The log on top of the store verifies, proves inclusion and consistency.
    audit = AuditLog(again, origin="audit.test/510000", key=key, key_name="audit-510000")
    audit.time_stamper = lambda note: b"token over " + note[:20]  # kept beside the note
    latest = await audit.checkpoint()
    stored = (await again.checkpoints())[-1]
    assert (stored.note, stored.time_stamp) == (
        latest.note,
        b"token over " + latest.note.encode()[:20],
    )
    assert (await again.checkpoints())[0].time_stamp is None
    result = await audit.verify()
    assert result.intact, result.problem
    assert result.records_checked == 51
    proof, size, root, leaf = await audit.inclusion_proof(7)
    verify_inclusion(leaf, 7, size, proof, root)
    assert root == latest.root
    consistency, size2, root2 = await audit.consistency_proof(50)
    verify_consistency(50, size2, consistency, head.root, root2)
    await again.close()


async def check_outbox_contract(make_store: Callable[[], AuditStore]) -> None:
    """The outbox: a record's message is stored with it, read back per destination in index
    order past the destination's cursor, forgotten once acknowledged (the cursor never moves
    back), withdrawn on request, and still there after a reopen."""
    store = make_store()
    await store.open()
    base = (await store.head()).size

    def outbound(i: int) -> Outbound | None:
        if i % 2 == 0:
            return Outbound("330000", f'{{"n":{i}}}'.encode())
        if i % 3 == 0:
            return Outbound("500000", f'{{"n":{i}}}'.encode())
        return None

    appended = await asyncio.gather(
        *(store.append(make_record(100 + i), outbound(i)) for i in range(12))
    )
    by_index = {a.index: i for a, i in zip(appended, range(12), strict=True)}
    assert sorted(by_index) == list(range(base, base + 12))
    owed = sorted(a.index for a, i in zip(appended, range(12), strict=True) if i % 2 == 0)
    first = await store.outbox("330000", 100)
    assert [p.index for p in first] == owed  # index order, this destination only
    assert [p.payload for p in first] == [f'{{"n":{by_index[x]}}}'.encode() for x in owed]
    assert [p.index for p in await store.outbox("330000", 2)] == owed[:2]
    assert await store.outbox("110000", 10) == []
    assert await store.outbox("330000", 0) == []
    assert await store.outbox_backlog() == {"330000": 6, "500000": 2}
    # Acknowledged: forgotten, and the cursor never moves back.
    await store.acknowledge("330000", owed[2])
    assert [p.index for p in await store.outbox("330000", 100)] == owed[3:]
    await store.acknowledge("330000", owed[0])
    assert [p.index for p in await store.outbox("330000", 100)] == owed[3:]
    assert await store.outbox_backlog() == {"330000": 3, "500000": 2}
    # Withdrawn: one message, once.
    for_500000 = [p.index for p in await store.outbox("500000", 10)]
    assert await store.withdraw(for_500000[0])
    assert not await store.withdraw(for_500000[0])
    assert not await store.withdraw(owed[0])  # acknowledged already
    assert [p.index for p in await store.outbox("500000", 10)] == for_500000[1:]
    await store.close()
    # Durable: a reopened store still owes the rest, past the same cursor.
    again = make_store()
    await again.open()
    assert [p.index for p in await again.outbox("330000", 100)] == owed[3:]
    assert await again.outbox_backlog() == {"330000": 3, "500000": 1}
    await again.acknowledge("330000", owed[-1])
    await again.acknowledge("500000", for_500000[-1])
    assert await again.outbox_backlog() == {}
    # The records themselves are untouched by all of this.
    assert len(await again.rows(base, base + 12)) == 12
    await again.close()
