"""Oversight over real mutual TLS: who may read the audit log, queries by citizen (hashed on the
server), the data-tracker view, verification and proofs an independent verifier accepts; and
Credentials.Seal recorded, fail closed, with a final checkpoint at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import queue
import threading
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import rfc8785
from audit_contract import make_record
from cli_support import Run
from google.rpc import error_details_pb2, status_pb2
from support import Federation, channel, credentials_as, dev_config, error_info, running

from gateway.audit import (
    AuditLog,
    AuditRecord,
    Outcome,
    SqliteAuditStore,
    digest_form,
    pseudonymize,
    verify_checkpoint,
    verify_consistency,
    verify_inclusion,
)
from gateway.config import GatewayConfig
from gateway.server import Gateway
from tongban.v1 import (
    common_pb2,
    credentials_pb2,
    credentials_pb2_grpc,
    oversight_pb2,
    oversight_pb2_grpc,
)

pytestmark = pytest.mark.integration

CALL_TIMEOUT = 5.0  # seconds: any single RPC here
CITIZEN = "11010519491231002X"  # the GB 11643 standard's own example: a valid check character


def audited_config(fed: Federation, tmp_path: Path) -> GatewayConfig:
    config = dev_config(fed, "330000")
    assert config.audit is not None
    audit = dataclasses.replace(
        config.audit, store="sqlite", path=tmp_path / "audit.db", checkpoint_every_records=1000
    )
    return dataclasses.replace(config, audit=audit)


def oversight_as(
    fed: Federation, owner: str, port: int
) -> tuple[grpc.aio.Channel, oversight_pb2_grpc.OversightAsyncStub]:
    ch = channel(port, credentials_as(fed, owner, "330000"))
    return ch, oversight_pb2_grpc.OversightStub(ch)


async def _fill(audit: AuditLog, key: bytes, n: int) -> None:
    for i in range(n):
        record = dataclasses.replace(
            make_record(i),
            subject=pseudonymize(CITIZEN if i % 2 else "other-citizen", key),
            region="330000",
        )
        await audit.append(record)


async def test_only_this_regions_oversight_agencies_may_read(
    federation: Federation, tmp_path: Path
) -> None:
    async with running(audited_config(federation, tmp_path)) as (_, port):
        for owner in ("zj.hrss", "sc.data", "cq.data"):  # no oversight role / another region's
            ch, stub = oversight_as(federation, owner, port)
            async with ch:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.VerifyAudit(oversight_pb2.VerifyAuditRequest(), timeout=CALL_TIMEOUT)
                assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert error_info(caught.value).reason == "NOT_AUTHORISED_ROLE"


async def test_queries_subject_access_and_paging(federation: Federation, tmp_path: Path) -> None:
    config = audited_config(federation, tmp_path)
    assert config.audit is not None
    async with running(config) as (gateway, port):
        assert gateway.audit is not None
        await _fill(gateway.audit, config.audit.pseudonym_key, 9)
        ch, stub = oversight_as(federation, "zj.data", port)
        async with ch:
            call = stub.QueryAudit(
                oversight_pb2.QueryAuditRequest(subject_id=CITIZEN, page_size=2),
                timeout=CALL_TIMEOUT,
            )
            first = [r async for r in call]
            assert [r.index for r in first] == [1, 3]
            token = dict(await call.trailing_metadata())["tongban-next-page-token"]
            rest = [
                r
                async for r in stub.QueryAudit(
                    oversight_pb2.QueryAuditRequest(
                        subject_id=CITIZEN, page_size=100, page_token=token
                    ),
                    timeout=CALL_TIMEOUT,
                )
            ]
            # the second page ends where the log ended at the first: the first call's own
            # record (index 9, about this citizen) is not in it
            assert [r.index for r in rest] == [5, 7]
            assert all(
                r.subject_pseudonym == pseudonymize(CITIZEN, config.audit.pseudonym_key)
                for r in first + rest
            )
            assert all(CITIZEN not in str(r) for r in first + rest)  # the raw id is never sent back
            assert first[0].audit_id == "audit.tongban/330000#1"
            denied = [
                r
                async for r in stub.QueryAudit(
                    oversight_pb2.QueryAuditRequest(outcome=common_pb2.OUTCOME_DENIED),
                    timeout=CALL_TIMEOUT,
                )
            ]
            assert denied == []
            # one record by its index; with filters, the first match from that index on
            for index in (0, 4, 8):
                (one,) = [
                    r
                    async for r in stub.QueryAudit(
                        oversight_pb2.QueryAuditRequest(start_index=index, page_size=1),
                        timeout=CALL_TIMEOUT,
                    )
                ]
                assert one.index == index
            from_four = stub.QueryAudit(
                oversight_pb2.QueryAuditRequest(subject_id=CITIZEN, start_index=4, page_size=9),
                timeout=CALL_TIMEOUT,
            )
            assert [r.index async for r in from_four][:2] == [5, 7]
            past = stub.QueryAudit(
                oversight_pb2.QueryAuditRequest(start_index=2**63), timeout=CALL_TIMEOUT
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                _ = [r async for r in past]
            assert error_info(caught.value).reason == "INVALID_ARGUMENT_FORMAT"
            tracker = await stub.SubjectAccess(
                oversight_pb2.SubjectAccessRequest(subject_id=CITIZEN), timeout=CALL_TIMEOUT
            )
            # the four queries, then the three QueryAudit calls that read this citizen's trail
            assert [e.rpc for e in tracker.entries] == [
                *["/tongban.v1.DataExchange/Query"] * 4,
                *["/tongban.v1.Oversight/QueryAudit"] * 3,
            ]
            assert tracker.entries[4].requester_agency == "zj.data"
            assert tracker.next_page_token == ""
            entry = tracker.entries[0]
            assert (entry.requester_agency, entry.requester_agency_name) == (
                "sc.hrss",
                "四川省人力资源和社会保障厅",
            )
            assert (entry.purpose, entry.purpose_name) == (
                "SI-TRANSFER",
                "企业职工基本养老保险关系转移接续",
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.SubjectAccess(oversight_pb2.SubjectAccessRequest(), timeout=CALL_TIMEOUT)
            assert error_info(caught.value).reason == "SUBJECT_ID_INVALID"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                _ = [
                    r
                    async for r in stub.QueryAudit(
                        oversight_pb2.QueryAuditRequest(page_token="x"), timeout=CALL_TIMEOUT
                    )
                ]
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_verify_and_proofs_hold_for_an_independent_verifier(
    federation: Federation, tmp_path: Path
) -> None:
    config = audited_config(federation, tmp_path)
    assert config.audit is not None
    async with running(config) as (gateway, port):
        assert gateway.audit is not None
        await _fill(gateway.audit, config.audit.pseudonym_key, 6)
        early = await gateway.audit.checkpoint()
        await _fill(gateway.audit, config.audit.pseudonym_key, 5)
        latest = await gateway.audit.checkpoint()
        ch, stub = oversight_as(federation, "zj.data", port)
        async with ch:
            result = await stub.VerifyAudit(
                oversight_pb2.VerifyAuditRequest(), timeout=CALL_TIMEOUT
            )
            assert (result.intact, result.records_checked, result.first_bad_index) == (True, 11, -1)
            assert result.latest_checkpoint.size == 11
            kept = oversight_pb2.Checkpoint(
                origin=early.origin,
                size=early.size,
                root_hash=early.root,
                note=early.note,
                key_name=early.key_name,
            )
            assert (
                await stub.VerifyAudit(
                    oversight_pb2.VerifyAuditRequest(trusted_checkpoint=kept), timeout=CALL_TIMEOUT
                )
            ).intact
            inclusion = await stub.GetProof(
                oversight_pb2.GetProofRequest(
                    inclusion=oversight_pb2.InclusionProofRequest(index=4)
                ),
                timeout=CALL_TIMEOUT,
            )
            verify_inclusion(
                inclusion.leaf_hash, 4, inclusion.tree_size, list(inclusion.hashes), latest.root
            )
            listed = [
                r
                async for r in stub.QueryAudit(
                    oversight_pb2.QueryAuditRequest(page_size=100), timeout=CALL_TIMEOUT
                )
            ]
            assert listed[4].index == 4
            assert listed[4].leaf_hash == inclusion.leaf_hash  # a listed record links to its proof
            consistency = await stub.GetProof(
                oversight_pb2.GetProofRequest(
                    consistency=oversight_pb2.ConsistencyProofRequest(first_size=early.size)
                ),
                timeout=CALL_TIMEOUT,
            )
            verify_consistency(
                early.size, consistency.tree_size, list(consistency.hashes), early.root, latest.root
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetProof(
                    oversight_pb2.GetProofRequest(
                        inclusion=oversight_pb2.InclusionProofRequest(index=99)
                    ),
                    timeout=CALL_TIMEOUT,
                )
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_seals_are_audited_denials_too_and_a_final_checkpoint_is_signed(
    federation: Federation, tmp_path: Path
) -> None:
    config = audited_config(federation, tmp_path)
    async with running(config) as (gateway, port):
        ch = channel(port, credentials_as(federation, "zj.hrss", "330000"))
        async with ch:
            sealed = await credentials_pb2_grpc.CredentialsStub(ch).Seal(
                credentials_pb2.SealRequest(payload=b'{"licence": 1}'), timeout=CALL_TIMEOUT
            )
        ch = channel(port, credentials_as(federation, "sc.hrss", "330000"))
        async with ch:
            with pytest.raises(grpc.aio.AioRpcError):
                await credentials_pb2_grpc.CredentialsStub(ch).Seal(
                    credentials_pb2.SealRequest(payload=b"x"), timeout=CALL_TIMEOUT
                )
        assert gateway.audit is not None
        records = await gateway.audit.store.query(
            __import__("gateway.audit", fromlist=["AuditQuery"]).AuditQuery(limit=10)
        )
    assert [(r.rpc, r.caller_agency, r.outcome) for _, r in records] == [
        ("/tongban.v1.Credentials/Seal", "zj.hrss", Outcome.ALLOWED),
        ("/tongban.v1.Credentials/Seal", "sc.hrss", Outcome.DENIED),
    ]
    assert records[0][1].sealed_digest == hashlib.sha256(sealed.record.jws.encode()).hexdigest()
    assert records[1][1].reason == "NOT_AUTHORISED_ROLE"
    store = SqliteAuditStore(
        tmp_path / "audit.db"
    )  # after shutdown: the final checkpoint covers both
    await store.open()
    assert (await store.checkpoints())[-1].size == 2
    await store.close()


async def test_a_seal_is_not_released_when_it_cannot_be_audited(federation: Federation) -> None:
    async with running(dev_config(federation, "330000")) as (
        gateway,
        port,
    ):  # in-memory audit store
        assert gateway.audit is not None
        gateway.audit.store.available = False  # type: ignore[attr-defined]
        ch = channel(port, credentials_as(federation, "zj.hrss", "330000"))
        async with ch:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await credentials_pb2_grpc.CredentialsStub(ch).Seal(
                    credentials_pb2.SealRequest(payload=b"x"), timeout=CALL_TIMEOUT
                )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_info(caught.value).reason == "AUDIT_UNAVAILABLE"
        gateway.audit.store.available = True  # type: ignore[attr-defined]


async def test_a_cancelled_query_audit_stream_ends_cleanly(
    federation: Federation, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that cancels a QueryAudit stream mid-way leaves no task error behind (the
    caller's ContextVar was once reset from the context grpc closed the generator in)."""
    config = audited_config(federation, tmp_path)
    assert config.audit is not None
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, ctx: unhandled.append(ctx))
    try:
        async with running(config) as (gateway, port):
            assert gateway.audit is not None
            await _fill(gateway.audit, config.audit.pseudonym_key, 300)
            ch, stub = oversight_as(federation, "zj.data", port)
            async with ch:
                for _ in range(3):
                    call = stub.QueryAudit(
                        oversight_pb2.QueryAuditRequest(page_size=300), timeout=CALL_TIMEOUT
                    )
                    async for _record in call:
                        break
                    call.cancel()
                    assert await call.code() == grpc.StatusCode.CANCELLED
                # the stream still serves after the cancellations
                listed = [
                    r
                    async for r in stub.QueryAudit(
                        oversight_pb2.QueryAuditRequest(page_size=5), timeout=CALL_TIMEOUT
                    )
                ]
                assert len(listed) == 5
            await asyncio.sleep(0.2)
            gc.collect()
            await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    problems = [str(c.get("exception") or c.get("message")) for c in unhandled]
    problems += [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [p for p in problems if "Context" in p or "never retrieved" in p], problems


async def _append_huge(audit: AuditLog, key: bytes, n: int, size: int) -> None:
    """`n` records about CITIZEN whose case ids are `size` characters long: what two Query calls
    with 9 MB case ids once left in the log. A record made today bounds its values (T16), so
    these are decoded from stored bytes, as records written before the bounds are."""
    for i in range(n):
        record = dataclasses.replace(
            make_record(100 + i), subject=pseudonymize(CITIZEN, key), region="330000"
        )
        document = json.loads(record.canonical)
        document["case_id"] = f"{i}" + "C" * (size - 1)
        legacy = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        await audit.append(AuditRecord.from_canonical(legacy.encode()))


async def test_a_trail_with_huge_values_stays_readable_page_by_page(
    federation: Federation, tmp_path: Path
) -> None:
    config = audited_config(federation, tmp_path)
    assert config.audit is not None
    async with running(config) as (gateway, port):
        assert gateway.audit is not None
        await _fill(gateway.audit, config.audit.pseudonym_key, 6)  # 1, 3, 5 are CITIZEN's
        await _append_huge(gateway.audit, config.audit.pseudonym_key, 2, 9 * 1024 * 1024)
        await _fill(gateway.audit, config.audit.pseudonym_key, 4)  # 9, 11 are CITIZEN's
        ch, stub = oversight_as(federation, "zj.data", port)
        async with ch:
            entries: list[oversight_pb2.SubjectAccessEntry] = []
            token = ""
            pages = 0
            while True:
                page = await stub.SubjectAccess(
                    oversight_pb2.SubjectAccessRequest(
                        subject_id=CITIZEN, page_size=2, page_token=token
                    ),
                    timeout=CALL_TIMEOUT,
                )
                pages += 1
                assert page.ByteSize() < 1024 * 1024 + 64 * 1024  # bounded in bytes too
                entries.extend(page.entries)
                token = page.next_page_token
                if not token:
                    break
            # 3 + 2 huge + 2 data accesses, none lost; nothing appended since the first page
            # (these SubjectAccess calls' own records) is in this listing
            data = [e for e in entries if e.rpc == "/tongban.v1.DataExchange/Query"]
            assert len(data) == len(entries) == 7
            assert pages == 4
            huge = [e for e in entries if e.abridged]
            assert len(huge) == 2
            for i, entry in enumerate(huge):
                case_id = f"{i}" + "C" * (9 * 1024 * 1024 - 1)
                assert entry.case_id == "sha256:" + hashlib.sha256(case_id.encode()).hexdigest()
            # The same trail through QueryAudit: every record arrives, the huge ones abridged
            # but still tied to their leaf and so to GetProof.
            listed: list[oversight_pb2.AuditRecord] = []
            token = ""
            while True:
                call = stub.QueryAudit(
                    oversight_pb2.QueryAuditRequest(
                        subject_id=CITIZEN, page_size=1000, page_token=token
                    ),
                    timeout=CALL_TIMEOUT,
                )
                listed.extend([r async for r in call])
                token = dict(await call.trailing_metadata()).get("tongban-next-page-token", "")
                if not token:
                    break
            queried = [r for r in listed if r.rpc == "/tongban.v1.DataExchange/Query"]
            assert [r.index for r in queried] == [1, 3, 5, 6, 7, 9, 11]
            assert [r.abridged for r in queried] == [False, False, False, True, True, False, False]
            stored = await gateway.audit.store.rows(6, 7)
            assert queried[3].leaf_hash == stored[0].leaf_hash


async def test_every_oversight_call_is_audited_granted_or_refused(
    federation: Federation, tmp_path: Path
) -> None:
    config = audited_config(federation, tmp_path)
    assert config.audit is not None
    async with running(config) as (gateway, port):
        assert gateway.audit is not None
        await _fill(gateway.audit, config.audit.pseudonym_key, 4)
        await gateway.audit.checkpoint()
        ch, stub = oversight_as(federation, "zj.data", port)
        async with ch:
            listed = [
                r
                async for r in stub.QueryAudit(
                    oversight_pb2.QueryAuditRequest(subject_id=CITIZEN, purpose="SI-TRANSFER"),
                    timeout=CALL_TIMEOUT,
                )
            ]
            await stub.SubjectAccess(
                oversight_pb2.SubjectAccessRequest(subject_id=CITIZEN), timeout=CALL_TIMEOUT
            )
            await stub.VerifyAudit(oversight_pb2.VerifyAuditRequest(), timeout=CALL_TIMEOUT)
            await stub.GetProof(
                oversight_pb2.GetProofRequest(
                    inclusion=oversight_pb2.InclusionProofRequest(index=1)
                ),
                timeout=CALL_TIMEOUT,
            )
            await stub.SignCheckpoint(oversight_pb2.SignCheckpointRequest(), timeout=CALL_TIMEOUT)
        ch, refused = oversight_as(federation, "zj.hrss", port)  # no oversight role
        async with ch:
            with pytest.raises(grpc.aio.AioRpcError):
                await refused.SubjectAccess(
                    oversight_pb2.SubjectAccessRequest(subject_id=CITIZEN), timeout=CALL_TIMEOUT
                )
        rows = await gateway.audit.store.rows(4, 100)
    records = [AuditRecord.from_canonical(r.canonical) for r in rows]
    pseudonym = pseudonymize(CITIZEN, config.audit.pseudonym_key)
    assert [(r.rpc, r.caller_agency, r.outcome, r.reason) for r in records] == [
        ("/tongban.v1.Oversight/QueryAudit", "zj.data", Outcome.ALLOWED, ""),
        ("/tongban.v1.Oversight/SubjectAccess", "zj.data", Outcome.ALLOWED, ""),
        ("/tongban.v1.Oversight/VerifyAudit", "zj.data", Outcome.ALLOWED, ""),
        ("/tongban.v1.Oversight/GetProof", "zj.data", Outcome.ALLOWED, ""),
        ("/tongban.v1.Oversight/SignCheckpoint", "zj.data", Outcome.ALLOWED, ""),
        ("/tongban.v1.Oversight/SubjectAccess", "zj.hrss", Outcome.DENIED, "NOT_AUTHORISED_ROLE"),
    ]
    query, access = records[0], records[1]
    assert (query.subject, query.purpose) == (pseudonym, "SI-TRANSFER")
    assert query.fields == (f"returned={len(listed)}",)
    assert access.subject == pseudonym
    assert "returned=3" in access.fields  # two queries and the QueryAudit call before it
    assert records[5].subject == pseudonym
    assert all(CITIZEN not in r.canonical.decode() for r in records)  # never the raw id


@pytest.mark.parametrize(
    "ask",
    [
        lambda stub: stub.VerifyAudit(oversight_pb2.VerifyAuditRequest(), timeout=CALL_TIMEOUT),
        lambda stub: stub.SubjectAccess(
            oversight_pb2.SubjectAccessRequest(subject_id=CITIZEN), timeout=CALL_TIMEOUT
        ),
        lambda stub: stub.GetProof(
            oversight_pb2.GetProofRequest(
                inclusion=oversight_pb2.InclusionProofRequest(index=0, tree_size=1)
            ),
            timeout=CALL_TIMEOUT,
        ),
        lambda stub: stub.SignCheckpoint(
            oversight_pb2.SignCheckpointRequest(), timeout=CALL_TIMEOUT
        ),
        lambda stub: _drain(stub.QueryAudit(oversight_pb2.QueryAuditRequest(), timeout=5.0)),
    ],
    ids=["VerifyAudit", "SubjectAccess", "GetProof", "SignCheckpoint", "QueryAudit"],
)
async def test_oversight_answers_nothing_it_cannot_audit(
    federation: Federation, ask: Callable[[Any], Awaitable[object]]
) -> None:
    async with running(dev_config(federation, "330000")) as (gateway, port):  # in memory
        assert gateway.audit is not None
        await gateway.audit.append(make_record(0))
        gateway.audit.store.available = False  # type: ignore[attr-defined]
        ch, stub = oversight_as(federation, "zj.data", port)
        async with ch:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await ask(stub)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_info(caught.value).reason == "AUDIT_UNAVAILABLE"


async def _drain(call: Any) -> list[Any]:
    return [r async for r in call]


async def test_sign_checkpoint_signs_now_and_is_rate_limited(
    federation: Federation, tmp_path: Path
) -> None:
    config = audited_config(federation, tmp_path)
    assert config.audit is not None
    async with running(config) as (gateway, port):
        assert gateway.audit is not None
        await _fill(gateway.audit, config.audit.pseudonym_key, 3)
        ch, stub = oversight_as(federation, "zj.data", port)
        async with ch:
            answer = await stub.SignCheckpoint(
                oversight_pb2.SignCheckpointRequest(), timeout=CALL_TIMEOUT
            )
            checkpoint = answer.checkpoint
            # It covers the records, and the call's own record (appended first).
            assert (answer.signed_now, checkpoint.size) == (True, 4)
            assert checkpoint.key_name == checkpoint.origin == "audit.tongban/330000"
            signed = checkpoint.signed_at.ToDatetime(tzinfo=UTC)
            assert abs(signed - datetime.now(UTC)) < timedelta(minutes=5)  # not 1970
            verify_checkpoint(
                checkpoint.note,
                gateway.audit.public_key,
                checkpoint.origin,  # C2SP: the key is named after the log
                origin="audit.tongban/330000",
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.SignCheckpoint(
                    oversight_pb2.SignCheckpointRequest(), timeout=CALL_TIMEOUT
                )
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error_info(caught.value).reason == "CHECKPOINT_RATE_LIMITED"
            delay = retry_delay(caught.value)
            assert 0 < delay <= 60
            # The refusal is audited too; the checkpoint stays what it was.
            latest = await gateway.audit.latest_checkpoint()
            assert latest is not None
            assert latest.size == 4
            verified = await stub.VerifyAudit(
                oversight_pb2.VerifyAuditRequest(), timeout=CALL_TIMEOUT
            )
            assert verified.latest_checkpoint.signed_at == checkpoint.signed_at


def retry_delay(exc: grpc.aio.AioRpcError) -> float:
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            assert isinstance(value, bytes)
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return info.retry_delay.ToTimedelta().total_seconds()
    raise AssertionError("no RetryInfo")


async def test_get_proof_size_zero_is_the_latest_checkpoints_size(
    federation: Federation, tmp_path: Path
) -> None:
    config = audited_config(federation, tmp_path)
    assert config.audit is not None
    async with running(config) as (gateway, port):
        assert gateway.audit is not None
        ch, stub = oversight_as(federation, "zj.data", port)
        async with ch:
            await _fill(gateway.audit, config.audit.pseudonym_key, 3)
            with pytest.raises(grpc.aio.AioRpcError) as caught:  # no checkpoint yet
                await stub.GetProof(
                    oversight_pb2.GetProofRequest(
                        inclusion=oversight_pb2.InclusionProofRequest(index=1)
                    ),
                    timeout=CALL_TIMEOUT,
                )
            assert error_info(caught.value).reason == "INVALID_ARGUMENT_FORMAT"
            await _fill(gateway.audit, config.audit.pseudonym_key, 3)
            signed = await gateway.audit.checkpoint()
            await _fill(gateway.audit, config.audit.pseudonym_key, 5)  # the log grows past it
            inclusion = await stub.GetProof(
                oversight_pb2.GetProofRequest(
                    inclusion=oversight_pb2.InclusionProofRequest(index=2)
                ),
                timeout=CALL_TIMEOUT,
            )
            assert inclusion.tree_size == signed.size
            verify_inclusion(
                inclusion.leaf_hash, 2, signed.size, list(inclusion.hashes), signed.root
            )
            consistency = await stub.GetProof(
                oversight_pb2.GetProofRequest(
                    consistency=oversight_pb2.ConsistencyProofRequest(first_size=3)
                ),
                timeout=CALL_TIMEOUT,
            )
            assert (consistency.tree_size, consistency.root_hash) == (signed.size, signed.root)


@contextlib.contextmanager
def serving_in_a_thread(config: GatewayConfig) -> Iterator[tuple[Gateway, int]]:
    """A gateway on its own event loop in a thread, for a CLI that runs its own loop."""
    started: queue.Queue[tuple[Gateway, int, asyncio.Event]] = queue.Queue()
    loop = asyncio.new_event_loop()

    async def serve() -> None:
        async with running(config) as (gateway, port):
            stop = asyncio.Event()
            started.put((gateway, port, stop))
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    thread.start()
    try:
        gateway, port, stop = started.get(timeout=60)
        try:
            yield gateway, port
        finally:
            loop.call_soon_threadsafe(stop.set)
    finally:
        thread.join(60)
        loop.close()


def test_the_cli_asks_for_a_checkpoint_and_is_told_when_to_ask_again(
    federation: Federation, tmp_path: Path, run: Run
) -> None:
    config = audited_config(federation, tmp_path)
    with serving_in_a_thread(config) as (_, port):
        kept = tmp_path / "checkpoint.txt"
        argv = ["audit", "checkpoint", "--gateway", f"localhost:{port}", "--pki", federation.pki]
        code, out, err = run(*argv, "--agency", "zj.data", "--json", "--out", kept)
        assert (code, err) == (0, "")
        answer = json.loads(out)
        assert (answer["origin"], answer["key_name"]) == ("audit.tongban/330000",) * 2
        assert (answer["size"], answer["signed_now"], answer["verified"]) == (1, True, True)
        assert datetime.fromisoformat(answer["signed_at"]).year >= 2026
        assert kept.read_text(encoding="utf-8") == answer["note"]
        code, out, err = run(*argv, "--agency", "zj.data")
        assert (code, out) == (1, "")
        assert "RESOURCE_EXHAUSTED CHECKPOINT_RATE_LIMITED" in err
        assert "retry in" in err
        code, out, err = run(*argv, "--agency", "zj.hrss")  # no oversight role
        assert code == 1
        assert "PERMISSION_DENIED NOT_AUTHORISED_ROLE" in err
    # The saved note is what `tongban audit verify --checkpoint` takes.
    code, out, err = run(
        "audit",
        "verify",
        "--sqlite",
        tmp_path / "audit.db",
        "--pki",
        federation.pki,
        "--region",
        "330000",
        "--checkpoint",
        kept,
    )
    assert (code, err) == (0, "")
    assert out.startswith("INTACT")


_OUTCOME_NAMES = {
    common_pb2.OUTCOME_ALLOWED: "allowed",
    common_pb2.OUTCOME_DENIED: "denied",
    common_pb2.OUTCOME_FAILED: "failed",
}


def leaf_from_message(message: oversight_pb2.AuditRecord) -> bytes:
    """docs/audit.md "Leaf encoding", followed step by step from the message alone."""
    assert not message.abridged
    time = message.time.ToDatetime(tzinfo=UTC)
    document = {
        "agreement_id": message.agreement_id,
        "cache_hit": message.cache_hit,
        "caller_agency": message.caller_agency,
        "caller_operator": message.caller_operator,
        "caller_region": message.caller_region,
        "case_id": message.case_id,
        "dataset": message.dataset,
        "fields": sorted(message.fields),
        "gateway": message.gateway,
        "latency_us": message.latency_micros,
        "outcome": _OUTCOME_NAMES[message.outcome],
        "provider_region": message.provider_region,
        "purpose": message.purpose,
        "reason": message.reason,
        "region": message.region,
        "registry_version": message.registry_version,
        "request_id": message.request_id,
        "rpc": message.rpc,
        "sealed_digest": message.sealed_digest,
        "subject": message.subject_pseudonym,
        "time": f"{time:%Y-%m-%dT%H:%M:%S}.{message.time.nanos // 1000:06d}Z",
        "v": 1,
    }
    if message.request_digest:  # only a record that keeps a signed request has these
        document["request_digest"] = message.request_digest
    if message.request_sealed:
        document["request_sealed"] = message.request_sealed
    if message.consent_id:
        document["consent_id"] = message.consent_id
    canonical = json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    assert canonical == rfc8785.dumps(document)  # the same bytes by an RFC 8785 library
    return hashlib.sha256(b"\x00" + canonical).digest()


async def test_an_outsider_recomputes_each_leaf_from_query_audit_and_proves_it(
    federation: Federation, tmp_path: Path
) -> None:
    config = audited_config(federation, tmp_path)
    assert config.audit is not None
    async with running(config) as (gateway, port):
        assert gateway.audit is not None
        await _fill(gateway.audit, config.audit.pseudonym_key, 3)
        awkward = dataclasses.replace(  # what JSON escapes, and what it must not
            make_record(3),
            region="330000",
            caller_operator='经办人 "张三" \\ a/b \t\x01 é \u2028',
            fields=("zeta", "Name", "alpha", "名"),
            outcome=Outcome.DENIED,
            reason="FIELD_NOT_ALLOWED",
            time=datetime(2026, 11, 21, 8, 0, 0, 7, tzinfo=UTC),
        )
        await gateway.audit.append(awkward)
        ch, stub = oversight_as(federation, "zj.data", port)
        async with ch:
            await stub.SignCheckpoint(oversight_pb2.SignCheckpointRequest(), timeout=CALL_TIMEOUT)
            listed = [
                r
                async for r in stub.QueryAudit(
                    oversight_pb2.QueryAuditRequest(page_size=100), timeout=CALL_TIMEOUT
                )
            ]
            assert len(listed) == 5  # four records and the SignCheckpoint call's own
            for message in listed:
                leaf = leaf_from_message(message)
                assert leaf == message.leaf_hash
                proof = await stub.GetProof(
                    oversight_pb2.GetProofRequest(
                        inclusion=oversight_pb2.InclusionProofRequest(index=message.index)
                    ),
                    timeout=CALL_TIMEOUT,
                )
                verify_inclusion(
                    leaf,
                    message.index,
                    proof.checkpoint.size,
                    list(proof.hashes),
                    proof.checkpoint.root_hash,
                )


async def test_a_checkpoint_refused_for_an_outage_does_not_count_against_the_caller(
    federation: Federation,
) -> None:
    async with running(dev_config(federation, "330000")) as (gateway, port):  # in memory
        assert gateway.audit is not None
        store = gateway.audit.store
        ch, stub = oversight_as(federation, "zj.data", port)
        async with ch:
            store.available = False  # type: ignore[attr-defined]
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.SignCheckpoint(
                    oversight_pb2.SignCheckpointRequest(), timeout=CALL_TIMEOUT
                )
            assert error_info(caught.value).reason == "AUDIT_UNAVAILABLE"
            store.available = True  # type: ignore[attr-defined]
            answer = await stub.SignCheckpoint(
                oversight_pb2.SignCheckpointRequest(), timeout=CALL_TIMEOUT
            )
            assert answer.checkpoint.size >= 1


async def test_filters_typed_by_the_caller_are_recorded_safely(
    federation: Federation, tmp_path: Path
) -> None:
    """A NUL or a megabyte in a filter goes into the oversight record as a digest: the log stays
    verifiable (SQLite's JSON functions once read a NUL short: "query columns were edited")."""
    config = audited_config(federation, tmp_path)
    assert config.audit is not None
    async with running(config) as (gateway, port):
        assert gateway.audit is not None
        ch, stub = oversight_as(federation, "zj.data", port)
        async with ch:
            odd = {"dataset": "si.\x00participation", "purpose": "P" * 100_000}
            found = await _drain(
                stub.QueryAudit(
                    oversight_pb2.QueryAuditRequest(caller_agency="sc.\x07hrss", **odd),
                    timeout=CALL_TIMEOUT,
                )
            )
            assert found == []
            verdict = await stub.VerifyAudit(
                oversight_pb2.VerifyAuditRequest(), timeout=CALL_TIMEOUT
            )
            assert verdict.intact, verdict.problem
        (row,) = await gateway.audit.store.rows(0, 1)
    record = AuditRecord.from_canonical(row.canonical)
    for name, value in odd.items():
        assert getattr(record, name) == digest_form(value)
    assert "caller_agency=" + digest_form("sc.\x07hrss") in record.fields
