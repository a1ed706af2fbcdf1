"""Retention: pruning records older than the legal minimum, only explicitly, only after a signed
checkpoint vouches for what remains; the pruned log still verifies, still detects tampering,
and records its own pruning. On the in-memory and SQLite stores (PostgreSQL in its own tests)."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from audit_contract import make_record
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.audit import (
    AuditIntegrityError,
    AuditLog,
    AuditQuery,
    AuditStore,
    AuditUnavailable,
    MemoryAuditStore,
    SqliteAuditStore,
    leaf_hash,
)
from gateway.audit._log import MIN_RETENTION

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
ORIGIN = "audit.test/510000"
KEY = ed25519.Ed25519PrivateKey.generate()


def _stores(tmp_path: Path) -> dict[str, Callable[[], AuditStore]]:
    memory = MemoryAuditStore()
    return {"memory": lambda: memory, "sqlite": lambda: SqliteAuditStore(tmp_path / "audit.db")}


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], AuditStore]:
    return _stores(tmp_path)[request.param]


async def _filled(make_store: Callable[[], AuditStore], days: int = 400) -> AuditLog:
    """One record a day for `days` days up to NOW (index i is `days - i` days old)."""
    log = AuditLog(make_store(), origin=ORIGIN, key=KEY, key_name="audit-510000", clock=lambda: NOW)
    await log.open()
    for i in range(days):
        await log.append(dataclasses.replace(make_record(i), time=NOW - timedelta(days=days - i)))
    await log.checkpoint()
    return log


async def _prune(log: AuditLog, *, now: datetime = NOW, days: int = 180) -> object:
    return await log.prune(
        older_than=timedelta(days=days),
        operator="ops: 张三",
        reason="retention ticket 42",
        gateway="gw",
        region="510000",
        now=now,
    )


async def test_prune_removes_only_what_is_older_and_the_log_still_verifies(
    make_store: Callable[[], AuditStore],
) -> None:
    log = await _filled(make_store)
    pruned = await _prune(log)
    assert pruned is not None
    assert (pruned.first, pruned.cut) == (0, 220)  # type: ignore[attr-defined]
    assert pruned.at_cut.size == 220  # type: ignore[attr-defined]
    assert await log.store.rows(0, 220) == []
    assert [r.index for r in await log.store.rows(220, 222)] == [220, 221]
    marker = await log.store.pruned()
    assert marker is not None
    assert (marker.before, marker.operator, marker.reason) == (
        220,
        "ops: 张三",
        "retention ticket 42",
    )
    result = await log.verify()
    assert result.intact, result.problem
    assert result.records_checked == 181  # 180 kept, and the record of the prune itself
    (prune_record,) = [
        r for _, r in await log.store.query(AuditQuery(limit=1000)) if r.rpc == "Audit.Prune"
    ]
    assert (prune_record.caller_operator, prune_record.case_id) == (
        "ops: 张三",
        "retention ticket 42",
    )
    assert prune_record.agreement_id == "removed records 0 to 219"
    # Appends continue the same tree; a later prune moves the cut.
    appended = await log.append(dataclasses.replace(make_record(999), time=NOW))
    assert appended.index == 401
    later = await _prune(log, now=NOW + timedelta(days=30))
    assert later is not None
    assert (later.first, later.cut) == (220, 250)  # type: ignore[attr-defined]
    assert (await log.verify()).intact
    await log.close()


async def test_tampering_after_the_cut_is_still_named(
    make_store: Callable[[], AuditStore], tmp_path: Path
) -> None:
    log = await _filled(make_store)
    await _prune(log)
    store = log.store
    if isinstance(store, MemoryAuditStore):
        rows = await store.rows(0, 1000)
        edited = dataclasses.replace(make_record(7), time=NOW).canonical
        store.tamper(
            [
                r
                if r.index != 300
                else dataclasses.replace(r, canonical=edited, leaf_hash=leaf_hash(edited))
                for r in rows
            ]
        )
    else:
        with sqlite3.connect(tmp_path / "audit.db") as conn:
            conn.execute("DROP TRIGGER audit_records_no_update")
            edited = dataclasses.replace(make_record(7), time=NOW).canonical
            conn.execute(
                "UPDATE audit_records SET canonical = ?, leaf_hash = ? WHERE idx = 300",
                (edited, leaf_hash(edited)),
            )
    result = await log.verify()
    assert (result.intact, result.first_bad_index) == (False, 300)
    await log.close()


async def test_retention_shorter_than_the_legal_minimum_is_refused(
    make_store: Callable[[], AuditStore],
) -> None:
    log = await _filled(make_store, days=10)
    with pytest.raises(ValueError, match="at least 180 days"):
        await _prune(log, days=179)
    with pytest.raises(ValueError, match="names the operator"):
        await log.prune(
            older_than=MIN_RETENTION, operator=" ", reason="x", gateway="gw", region="510000"
        )
    # recorded raw, so within the record's grammars (T16): never silently digested
    for operator, reason in (
        ("ops", "r" * 129),
        ("ops", "line\nbreak"),
        ("11010519491231002X", "x"),
    ):
        with pytest.raises(ValueError, match="at most 128 printable characters"):
            await log.prune(
                older_than=MIN_RETENTION,
                operator=operator,
                reason=reason,
                gateway="gw",
                region="510000",
            )
    assert await _prune(log) is None  # nothing is that old: nothing happens
    assert await log.store.pruned() is None
    await log.close()


async def test_a_log_that_does_not_verify_is_not_pruned() -> None:
    store = MemoryAuditStore()
    log = await _filled(lambda: store)
    rows = await store.rows(0, 1000)
    store.tamper([r for r in rows if r.index != 10])
    with pytest.raises(AuditIntegrityError, match="record 10"):
        await _prune(log)
    assert await store.pruned() is None
    assert len(await store.rows(0, 1000)) == 399


async def test_a_verifier_without_signing_key_cannot_prune(
    make_store: Callable[[], AuditStore],
) -> None:
    log = await _filled(make_store)
    await log.close()
    reader = AuditLog(
        make_store(), origin=ORIGIN, key_name="audit-510000", public_key=KEY.public_key()
    )
    await reader.open()
    with pytest.raises(AuditUnavailable, match="no signing key"):
        await _prune(reader)
    assert (await reader.verify()).intact
    await reader.close()


async def test_a_prune_marker_no_checkpoint_vouches_for_is_refused(tmp_path: Path) -> None:
    log = await _filled(lambda: SqliteAuditStore(tmp_path / "audit.db"))
    await _prune(log)
    await log.close()
    with sqlite3.connect(tmp_path / "audit.db") as conn:  # the attacker removes the evidence
        conn.execute("DROP TRIGGER audit_checkpoints_no_delete")
        conn.execute("DELETE FROM audit_checkpoints WHERE size = 220")
        # and the delete trigger on records is back after the prune
        assert conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = 'audit_records_no_delete'"
        ).fetchone() == (1,)
    reader = AuditLog(
        SqliteAuditStore(tmp_path / "audit.db"), origin=ORIGIN, key=KEY, key_name="audit-510000"
    )
    await reader.open()
    result = await reader.verify()
    assert (result.intact, result.first_bad_index) == (False, 220)
    assert "no signed checkpoint vouches" in result.problem
    await reader.close()


async def test_proofs_after_the_cut_still_verify(make_store: Callable[[], AuditStore]) -> None:
    from gateway.audit import ProofError, verify_consistency, verify_inclusion

    log = await _filled(make_store)
    await _prune(log)
    head = await log.store.head()
    proof, size, root, leaf = await log.inclusion_proof(300)
    verify_inclusion(leaf, 300, size, proof, root)
    assert root == head.root
    consistency, size2, root2 = await log.consistency_proof(220)
    verify_consistency(220, size2, consistency, _root_at(await log.store.checkpoints(), 220), root2)
    with pytest.raises(ProofError, match="removed by retention"):
        await log.inclusion_proof(5)
    await log.close()


async def test_proofs_made_before_a_prune_do_not_lead_below_the_cut(
    make_store: Callable[[], AuditStore],
) -> None:
    """Compact ranges kept by proofs before the prune (below its cut and above it): after
    the prune, proofs start from the marker or a range above the cut, and are the same."""
    from gateway.audit import MerkleTree

    log = await _filled(make_store)
    full = MerkleTree([r.leaf_hash for r in await log.store.rows(0, 400)])
    for old, new in ((50, 100), (100, 230), (230, 300)):
        assert (await log.consistency_proof(old, new))[0] == full.consistency_proof(old, new)
    await _prune(log)
    cut = (await log.store.pruned()).before  # type: ignore[union-attr]
    assert 100 < cut < 230
    for old, new in ((cut, 300), (240, 400), (300, 400)):
        assert (await log.consistency_proof(old, new))[0] == full.consistency_proof(old, new)
    assert (await log.inclusion_proof(cut, 300))[0] == full.inclusion_proof(cut, 300)
    await log.close()


def _root_at(checkpoints: list[object], size: int) -> bytes:
    (checkpoint,) = [c for c in checkpoints if c.size == size]  # type: ignore[attr-defined]
    return checkpoint.root  # type: ignore[attr-defined,no-any-return]


async def test_a_malformed_prune_marker_is_reported_not_raised() -> None:
    store = MemoryAuditStore()
    log = await _filled(lambda: store)
    await _prune(log)
    marker = await store.pruned()
    assert marker is not None
    await store.prune(dataclasses.replace(marker, before=marker.before + 1, compact=b"\x00" * 64))
    result = await log.verify()
    assert (result.intact, result.first_bad_index) == (False, 221)
    assert "malformed" in result.problem
