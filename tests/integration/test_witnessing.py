"""Witnessed audit logs across three regions' gateways, over real mTLS channels and SQLite
stores: each checkpoint of a region's log is cosigned by the other two regions' witnesses; when
the region's log is rewritten behind its gateway (its store replaced by another history of the
same size), its next checkpoint is refused by both witnesses as a fork, counted, and kept as
evidence; and `tongban audit verify` with the registry accepts the witnessed log and refuses the
rewritten one, whose checkpoint has no cosignature."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from audit_contract import make_record
from cli_support import Run
from fault_support import metric_value, restart, running_gateways
from query_support import Cluster
from support import Federation, channel, credentials_as, eventually

from gateway.audit import SqliteAuditStore
from gateway.server import Gateway
from tongban.v1 import oversight_pb2, oversight_pb2_grpc

pytestmark = pytest.mark.integration

LOG_REGION = "510000"
WITNESSES = ("330000", "500000")
ORIGIN = f"audit.tongban/{LOG_REGION}"
RECORDS = 12


@pytest.fixture
async def cluster(federation: Federation, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_gateways(federation, tmp_path) as made:
        yield made


async def _cosigners(gateway: Gateway, size: int, root: bytes) -> list[str]:
    assert gateway.witnessing is not None
    return await gateway.witnessing.submitter.cosignatures.cosignatures(size, root)


async def _verify_audit(
    cluster: Cluster, federation: Federation
) -> oversight_pb2.VerifyAuditResponse:
    """Oversight.VerifyAudit on the log's gateway, as its region's oversight agency."""
    credentials = credentials_as(federation, "sc.data", LOG_REGION)
    async with channel(cluster.ports[LOG_REGION], credentials) as ch:
        stub = oversight_pb2_grpc.OversightStub(ch)
        return await stub.VerifyAudit(oversight_pb2.VerifyAuditRequest(), timeout=5.0)


async def _wait_for(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 15.0) -> None:
    """Poll an async predicate (eventually() polls sync ones)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_a_rewritten_log_is_refused_by_every_witness_and_oversight(
    cluster: Cluster, federation: Federation, tmp_path: Path, run: Run
) -> None:
    gateway = cluster.gateways[LOG_REGION]
    assert gateway.audit is not None
    for i in range(RECORDS):
        await gateway.audit.append(make_record(i))
    honest = await gateway.audit.checkpoint()

    async def cosigned_by_both() -> bool:
        return len(await _cosigners(gateway, honest.size, honest.root)) == 2

    await _wait_for(cosigned_by_both, "both witnesses' cosignatures")
    for region in WITNESSES:
        assert metric_value(cluster.gateways[region], "tongban_witness_cosigned_total", log=ORIGIN)
    db = tmp_path / f"audit-{LOG_REGION}.db"
    verify = (
        "audit", "verify", "--sqlite", db, "--pki", federation.pki, "--region", LOG_REGION,
        "--snapshot", federation.current,
    )  # fmt: skip
    code, out, err = await asyncio.to_thread(run, *verify)
    assert code == 0, err
    assert "WITNESSED" in out
    assert "witness.tongban/330000, witness.tongban/500000" in out
    answer = await _verify_audit(cluster, federation)
    assert (answer.intact, answer.witnessed, answer.witness_threshold) == (True, True, 1)
    assert list(answer.latest_cosigners) == ["witness.tongban/330000", "witness.tongban/500000"]
    assert answer.witnessed_checkpoint.note.startswith(honest.note)
    assert answer.witnessed_checkpoint.note.count("\u2014 witness.tongban/") == 2

    # Behind the gateway: the store replaced by another history of the same size.
    await gateway.stop(0)
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{db}{suffix}").exists():
            os.remove(f"{db}{suffix}")
    forged = SqliteAuditStore(db)
    await forged.open()
    for i in range(RECORDS):
        await forged.append(make_record(1000 + i))
    await forged.close()
    gateway = await restart(cluster, LOG_REGION)
    assert gateway.audit is not None
    rewritten = await gateway.audit.checkpoint()
    assert (rewritten.size, rewritten.root != honest.root) == (honest.size, True)

    await eventually(
        lambda: all(
            metric_value(cluster.gateways[r], "tongban_witness_forks_total", log=ORIGIN) == 1
            for r in WITNESSES
        ),
        "both witnesses to count the fork",
        timeout=15.0,
    )
    for region in WITNESSES:
        witness = cluster.gateways[region].witnessing
        assert witness is not None
        [fork] = await witness.witness.store.forks()
        assert (fork.held_note, fork.offered_note) == (honest.note, rewritten.note)
        assert fork.reason == f"two checkpoints of size {RECORDS} with different roots"
        held = await witness.witness.store.witness_state(ORIGIN)
        assert held is not None
        assert held.root == honest.root  # the witness did not move
    assert await _cosigners(gateway, rewritten.size, rewritten.root) == []
    assert metric_value(gateway, "tongban_witness_submission_failures_total", witness="330000")

    code, out, err = await asyncio.to_thread(run, *verify)
    assert code == 1
    assert "INTACT" in out  # the forged history agrees with itself ...
    assert "NOT WITNESSED" in out  # ... but no witness vouches for it
    answer = await _verify_audit(cluster, federation)
    assert (answer.intact, answer.witnessed) == (True, False)
    assert not answer.latest_cosigners
    assert not answer.HasField("witnessed_checkpoint")
