"""Access reports without a network: the report and batch format, signing and verification
against a dev registry, the two queues (the Redis one against the machine's Redis, under a
namespace of its own), the requester-side cache key and TTL, and the seal memo."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from redis.asyncio import Redis
from support import Federation, make_federation

from gateway.audit import pseudonymize
from gateway.cache import AnswerCache, MemoryBackend, cache_key
from gateway.reports import (
    MAX_REPORTS_PER_BATCH,
    AccessReport,
    AccessReporter,
    BatchRefused,
    MemoryReportQueue,
    RedisReportQueue,
    ReportFormatError,
    ReportQueueUnavailable,
    batch_payload,
    canonical_json,
    sign_batch,
    verify_batch,
)
from gateway.services.exchange import _PassedSeals
from registry import (
    KeyState,
    KeyUsage,
    Registry,
    RegistryUnavailable,
    SnapshotVerifier,
    load_authority_public_key,
)
from signer import load_private_key
from tongban.v1 import credentials_pb2

REDIS = "redis://127.0.0.1:6379/0"
NOW = datetime(2026, 11, 21, 8, 0, 0, 123456, tzinfo=UTC)
PSEUDONYM = pseudonymize("91330000MA27XL0E2B", b"k" * 32)


def report(**changes: object) -> AccessReport:
    base = AccessReport(
        request_id="req-1",
        caller_agency="sc.amr",
        caller_region="510000",
        caller_operator="经办人 张三",
        caller_thumbprint="thumb",
        dataset="market.business_licence",
        purpose="LICENCE-VERIFY",
        case_id="",
        subject_pseudonym=PSEUDONYM,
        fields=("company_name", "uscc"),
        accessed_at=NOW,
        sealed_digest=hashlib.sha256(b"jws").hexdigest(),
        answer_audit_id="audit.tongban/330000#41",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


# -- the report ---------------------------------------------------------------------------------
def test_a_report_round_trips_through_its_document_and_its_message() -> None:
    made = report()
    assert AccessReport.from_document(json.loads(canonical_json(made.document()))) == made
    assert AccessReport.from_message(made.message()) == made
    assert made.document()["accessed_at"] == "2026-11-21T08:00:00.123456Z"


@pytest.mark.parametrize(
    "changes",
    [
        {"subject_pseudonym": "110101199003074512"},  # a raw id is never a pseudonym
        {"sealed_digest": "abc"},
        {"fields": ("uscc", "company_name")},  # not sorted
        {"fields": ("uscc", "uscc")},
        {"fields": ()},
        {"caller_region": "51"},
        {"request_id": ""},
        {"case_id": "x" * 300},
        {"case_id": "line\nbreak"},
        {"accessed_at": datetime(2026, 11, 21, 8, 0)},  # naive
        {"answer_audit_id": ""},
        # T16: the same grammars as a query's (a report's values end up in the owner's log)
        {"case_id": "x" * 129},
        {"case_id": "case of 11010519491231002X"},
        {"request_id": "11010519491231002X"},
        {"request_id": "r 1"},
        {"caller_operator": "11010519491231002X"},
        {"purpose": "11010519491231002X"},
        {"dataset": "1market"},
        {"caller_agency": "sc amr"},
        {"fields": ("11010519491231002X",)},
    ],
)
def test_a_malformed_report_is_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ReportFormatError):
        report(**changes)


def test_a_document_with_other_keys_is_refused() -> None:
    document = report().document()
    with pytest.raises(ReportFormatError):
        AccessReport.from_document({**document, "subject_id": "110101199003074512"})
    with pytest.raises(ReportFormatError):
        AccessReport.from_document({**document, "accessed_at": "2026-11-21T08:00:00Z"})
    with pytest.raises(ReportFormatError):
        AccessReport.from_document({**document, "caller": {"agency_id": "sc.amr"}})


# -- batches ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    made = make_federation(tmp_path_factory.mktemp("fed"))
    made.publish()
    return made


@pytest.fixture(scope="module")
def registry(fed: Federation) -> Registry:
    verifier = SnapshotVerifier(load_authority_public_key(fed.pki / "authority/authority.pub.pem"))
    return verifier.verify(fed.current.read_bytes(), held_version=None, now=None).registry


def audit_key(fed: Federation, region: str) -> tuple[ed25519.Ed25519PrivateKey, str]:
    (record,) = fed.inventory().find(region, KeyUsage.AUDIT, KeyState.ACTIVE)
    key = load_private_key(fed.pki / record.private_key)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key, record.kid


def signed(
    fed: Federation,
    reports: list[AccessReport],
    *,
    region: str = "510000",
    owner: str = "330000",
    signer: str | None = None,
) -> str:
    key, kid = audit_key(fed, signer or region)
    payload = batch_payload(
        reporting_region=region,
        owner_region=owner,
        batch_id="b1",
        issued_at=NOW,
        reports=reports,
    )
    return sign_batch(payload, key, kid)


def verify(registry: Registry, jws: str, region: str = "510000") -> object:
    return verify_batch(
        jws,
        registry=registry,
        reporting_region=region,
        owner_region="330000",
        now=datetime.now(UTC),
    )


def refusal(registry: Registry, jws: str, region: str = "510000") -> tuple[str, int | None]:
    with pytest.raises(BatchRefused) as caught:
        verify(registry, jws, region)
    return caught.value.reason, caught.value.index


def test_a_signed_batch_verifies_with_the_registry_key(fed: Federation, registry: Registry) -> None:
    batch = verify_batch(
        signed(fed, [report(), report(request_id="req-2")]),
        registry=registry,
        reporting_region="510000",
        owner_region="330000",
        now=datetime.now(UTC),
    )
    assert [r.request_id for r in batch.reports] == ["req-1", "req-2"]
    assert batch.kid == audit_key(fed, "510000")[1]


def test_batches_that_are_not_signed_by_the_reporting_regions_audit_key_are_refused(
    fed: Federation, registry: Registry
) -> None:
    good = signed(fed, [report()])
    header, payload, _ = good.split(".")
    assert refusal(registry, f"{header}.{payload}.") == ("REPORT_SIGNATURE_INVALID", None)
    assert refusal(registry, signed(fed, [report()], signer="500000")) == (
        "REPORT_SIGNATURE_INVALID",
        None,
    )
    assert refusal(registry, good, region="500000") == ("REPORT_SIGNATURE_INVALID", None)
    stranger = sign_batch(b"{}", ed25519.Ed25519PrivateKey.generate(), audit_key(fed, "510000")[1])
    assert refusal(registry, stranger) == ("REPORT_SIGNATURE_INVALID", None)
    (seal,) = fed.inventory().find("510000", KeyUsage.SEAL, KeyState.ACTIVE)
    as_seal_key = sign_batch(b"{}", audit_key(fed, "510000")[0], seal.kid)
    assert refusal(registry, as_seal_key) == ("REPORT_SIGNATURE_INVALID", None)
    assert refusal(registry, "x" * 600_000) == ("REQUEST_TOO_LARGE", None)


def test_batches_with_a_wrong_payload_are_refused(fed: Federation, registry: Registry) -> None:
    key, kid = audit_key(fed, "510000")
    assert refusal(registry, signed(fed, [report()], owner="500000")) == (
        "REPORT_PAYLOAD_MISMATCH",
        None,
    )
    not_canonical = json.dumps(
        json.loads(
            batch_payload(
                reporting_region="510000",
                owner_region="330000",
                batch_id="b",
                issued_at=NOW,
                reports=[report()],
            )
        ),
        indent=1,
    ).encode()
    assert refusal(registry, sign_batch(not_canonical, key, kid)) == (
        "INVALID_ARGUMENT_FORMAT",
        None,
    )
    document = json.loads(
        batch_payload(
            reporting_region="510000",
            owner_region="330000",
            batch_id="b",
            issued_at=NOW,
            reports=[report(), report()],
        )
    )
    document["reports"][1]["subject_pseudonym"] = "110101199003074512"
    assert refusal(registry, sign_batch(canonical_json(document), key, kid)) == (
        "INVALID_ARGUMENT_FORMAT",
        1,
    )
    document["reports"] = [report().document()] * (MAX_REPORTS_PER_BATCH + 1)
    assert refusal(registry, sign_batch(canonical_json(document), key, kid)) == (
        "REQUEST_TOO_LARGE",
        None,
    )


# -- queues -------------------------------------------------------------------------------------
async def test_the_memory_queue_keeps_reports_until_done_and_is_bounded() -> None:
    queue = MemoryReportQueue(max_per_owner=3)
    ids = [await queue.put("330000", report(request_id=f"r{n}")) for n in range(3)]
    with pytest.raises(ReportQueueUnavailable):
        await queue.put("330000", report())
    assert await queue.owners() == ("330000",)
    taken = await queue.take("330000", 2)
    assert [q.report.request_id for q in taken] == ["r0", "r1"]
    assert [q.report.request_id for q in await queue.take("330000", 5)] == ["r0", "r1", "r2"]
    await queue.done("330000", [q.entry_id for q in taken])
    await queue.drop("330000", ids[2])
    assert await queue.backlog("330000") == 0
    assert await queue.owners() == ()


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS)
    yield client
    await client.aclose()


def crypto(key: bytes = bytes(range(32))) -> AnswerCache:
    return AnswerCache(MemoryBackend(), key=key, key_id=secrets.token_hex(4))


async def test_the_redis_queue_is_encrypted_redelivers_and_is_taken_over(redis: Redis) -> None:
    region = "510000"
    shared = crypto()
    first = RedisReportQueue(redis, region=region, crypto=shared, consumer="first")
    second = RedisReportQueue(redis, region=region, crypto=shared, consumer="second")
    try:
        ids = [await first.put("330000", report(request_id=f"r{n}")) for n in range(3)]
        stored = await redis.xrange(first.stream("330000"))
        assert len(stored) == 3
        assert all(PSEUDONYM.encode() not in value[b"r"] for _, value in stored)
        assert await first.owners() == ("330000",)
        taken = await first.take("330000", 2)
        assert [q.entry_id for q in taken] == ids[:2]
        # Not acknowledged: the same consumer gets them again first, the other does not.
        assert [q.entry_id for q in await first.take("330000", 2)] == ids[:2]
        second.claim_idle_seconds = 3600
        assert [q.entry_id for q in await second.take("330000", 5)] == ids[2:]
        # A consumer that died: its reports are taken over once idle long enough.
        second.claim_idle_seconds = 0
        assert sorted(q.entry_id for q in await second.take("330000", 5)) == sorted(ids)
        await second.done("330000", ids)
        assert await second.backlog("330000") == 0
        assert await first.take("330000", 5) == []
        # Emptied: a graceful stop leaves no key behind; a later report makes them again.
        await first.tidy()
        assert not await redis.exists(first.stream("330000"))
        assert await first.owners() == ()
        again = await first.put("330000", report())
        assert [q.entry_id for q in await first.take("330000", 5)] == [again]
        await first.done("330000", [again])
        await first.tidy()
    finally:
        await redis.delete(first.stream("330000"), f"tb:rep:{region}:{shared.key_id}:owners")


async def test_the_redis_queue_refuses_when_full_and_sets_unreadable_entries_aside(
    redis: Redis,
) -> None:
    region = "510000"
    first = crypto()
    queue = RedisReportQueue(redis, region=region, crypto=first, max_per_owner=2)
    stream = queue.stream("330000")
    try:
        await queue.put("330000", report())
        await queue.put("330000", report())
        with pytest.raises(ReportQueueUnavailable):
            await queue.put("330000", report())
        assert await queue.backlog("330000") == 2
        # The same names read with another cache key: nothing decrypts; set aside, not lost.
        other = crypto(bytes(range(1, 33)))
        other_queue = RedisReportQueue(redis, region=region, crypto=other)
        other_queue._prefix = queue._prefix  # the same stream, read with another key
        assert await other_queue.take("330000", 5) == []
        assert await queue.backlog("330000") == 0
        assert await redis.xlen(f"{stream}:unreadable") == 2
    finally:
        await redis.delete(stream, f"{stream}:unreadable", f"tb:rep:{region}:{first.key_id}:owners")


async def test_a_queue_whose_redis_is_down_refuses_at_once() -> None:
    client = Redis.from_url("redis://127.0.0.1:1/0")
    queue = RedisReportQueue(client, region="510000", crypto=crypto())
    with pytest.raises(ReportQueueUnavailable):
        await queue.put("330000", report())
    await client.aclose()


# -- the cache key, the TTL, the seal memo ------------------------------------------------------
def test_a_requester_side_key_is_apart_from_the_owners_and_other_requesters() -> None:
    parts = {
        "provider_region": "330000",
        "dataset": "market.business_licence",
        "subject_pseudonym": PSEUDONYM,
        "fields": ("uscc",),
        "purpose": "LICENCE-VERIFY",
    }
    owners = cache_key(**parts)  # type: ignore[arg-type]
    sichuan = cache_key(**parts, requester="510000")  # type: ignore[arg-type]
    chongqing = cache_key(**parts, requester="500000")  # type: ignore[arg-type]
    assert len({owners, sichuan, chongqing}) == 3


async def test_a_requester_never_keeps_an_answer_past_the_owners_ttl() -> None:
    cache = AnswerCache(MemoryBackend(), key=bytes(32), key_id="k", jitter=0.2)
    ttls = [cache.ttl_with_jitter(100, at_most=True) for _ in range(500)]
    assert min(ttls) >= 80
    assert max(ttls) <= 100
    assert max(cache.ttl_with_jitter(100) for _ in range(500)) > 100


def test_the_seal_memo_forgets_after_its_time_and_is_bounded() -> None:
    now = [0.0]
    memo = _PassedSeals(seconds=5, entries=2, clock=lambda: now[0])
    record = credentials_pb2.SealedRecord(jws="a.b.c", payload=b"{}")
    key = _PassedSeals.key(record, 7, "330000")
    assert key != _PassedSeals.key(record, 8, "330000")
    assert key != _PassedSeals.key(record, 7, "500000")
    assert key != _PassedSeals.key(
        credentials_pb2.SealedRecord(jws="a.b.c", payload=b"[]"), 7, "330000"
    )
    memo.put(key, ("uscc",))
    assert memo.get(key) == ("uscc",)
    now[0] = 5.0
    assert memo.get(key) is None
    for n in range(3):
        memo.put(_PassedSeals.key(record, n, "330000"), ())
    assert memo.get(_PassedSeals.key(record, 0, "330000")) is None  # the oldest went


def test_the_seal_memo_keeps_no_expired_check() -> None:
    # One check per registry version (the key holds it): once their time is over they are
    # gone at the next check, not kept until 4096 others push them out.
    now = [0.0]
    memo = _PassedSeals(seconds=5, clock=lambda: now[0])
    record = credentials_pb2.SealedRecord(jws="a.b.c", payload=b"{}")
    for version in range(1000):
        memo.put(_PassedSeals.key(record, version, "330000"), ())
    now[0] = 5.0
    memo.put(_PassedSeals.key(record, 1000, "330000"), ())
    assert len(memo._passed) == 1


class _NoRegistry:
    def current(self) -> Registry:
        raise RegistryUnavailable("no registry snapshot has been loaded yet")


async def test_the_reporter_forgets_owners_nothing_is_queued_for() -> None:
    # A reporter that could not deliver to many owners, whose reports then left the queue
    # (taken back, or delivered by another replica): nothing per owner is kept for them.
    queue = MemoryReportQueue()
    reporter = AccessReporter(
        region="510000",
        registry=_NoRegistry(),  # type: ignore[arg-type]  # every send fails at once
        peers=None,  # type: ignore[arg-type]  # never reached
        queue=queue,
        key=ed25519.Ed25519PrivateKey.generate(),
    )
    owners = [f"{n:06d}" for n in range(100_000, 100_500)]
    entries = [(owner, await reporter.queue_report(owner, report())) for owner in owners]
    assert await reporter.flush() == 0
    assert reporter.counters.failures == len(owners)
    for owner, entry_id in entries:
        await reporter.unqueue(owner, entry_id)
    assert await queue.owners() == ()
    await reporter.flush()
    assert reporter._retry_at == {}
    assert reporter._waiting == {}
    assert queue._entries == {}  # no empty backlog left per owner either
