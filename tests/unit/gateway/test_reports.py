"""Access reports without a network: the report and batch format, signing and verification
against a dev registry, the reporter reading its outbox (the audit log) and moving each owner's
cursor only past what the owner acknowledged, the requester-side cache key and TTL, and the
seal memo."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from audit_contract import make_record
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from support import Federation, make_federation

from gateway.audit import AuditLog, MemoryAuditStore, Outbound, pseudonymize
from gateway.cache import AnswerCache, MemoryBackend, cache_key
from gateway.flows import PassedSeals as _PassedSeals
from gateway.reports import (
    MAX_REPORTS_PER_BATCH,
    AccessReport,
    AccessReporter,
    BatchRefused,
    ReportFormatError,
    _format,
    batch_payload,
    sign_batch,
    verify_batch,
)
from gateway.services.exchange import sealed_answer
from registry import (
    KeyState,
    KeyUsage,
    Registry,
    RegistryUnavailable,
    SnapshotVerifier,
    load_trusted_root,
)
from signer import canonical_json, load_private_key
from tongban.v1 import credentials_pb2, exchange_pb2

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


@pytest.mark.parametrize(
    "changes",
    [
        {"request_id": ""},
        {"request_id": "r 1"},
        {"request_id": "11010519491231002X"},
        {"request_id": 7},
        {"case_id": "x" * 300, "request_id": "r 1"},
        {"fields": ("uscc", "uscc"), "request_id": ""},
        {"request_id": "req-2"},
    ],
)
def test_a_report_like_the_last_well_formed_one_is_checked_as_any_other(
    changes: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report equal to the last well-formed one but for its request id (and time) has only
    its request id checked: the outcome, and the message of a refusal, are the same as when no
    report was checked before."""

    def outcome() -> str:
        try:
            report(**changes)
        except (ReportFormatError, TypeError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return "well formed"

    class Forgetful(list[tuple[object, ...]]):
        def __setitem__(self, index: Any, value: Any) -> None:
            pass  # nothing kept: every report is checked in full

    report()  # the last well-formed report
    after_one = outcome()
    monkeypatch.setattr(_format, "_LAST_FORM", Forgetful([()]))
    assert outcome() == after_one
    assert after_one == "well formed" or changes.get("request_id") != "req-2"


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
    verifier = SnapshotVerifier(load_trusted_root(fed.pki / "authority/root.json"))
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


def test_signed_reports_equal_to_known_documents_are_the_same_reports(
    fed: Federation, registry: Registry
) -> None:
    """`known` (the reports sent beside the batch, as parsed) spares a second check of each
    signed report equal to its known document: what the batch holds is the same either way,
    and a signed report that differs from its known one is still checked (and refused)."""
    made = [report(), report(request_id="req-2", case_id="case 7", fields=("uscc",))]
    jws = signed(fed, made)
    plain = verify(registry, jws)
    for known in ([r.document() for r in made], [made[0].document()], []):
        batch = verify_batch(
            jws,
            registry=registry,
            reporting_region="510000",
            owner_region="330000",
            now=datetime.now(UTC),
            known=known,
        )
        assert batch == plain
        assert list(batch.documents) == [r.document() for r in made]
        assert [type(r.accessed_at.tzinfo) for r in batch.reports] == [type(UTC)] * 2
    key, kid = audit_key(fed, "510000")
    document = json.loads(
        batch_payload(
            reporting_region="510000",
            owner_region="330000",
            batch_id="b",
            issued_at=NOW,
            reports=made,
        )
    )
    document["reports"][1]["subject_pseudonym"] = "110101199003074512"
    with pytest.raises(BatchRefused) as caught:
        verify_batch(
            sign_batch(canonical_json(document), key, kid),
            registry=registry,
            reporting_region="510000",
            owner_region="330000",
            now=datetime.now(UTC),
            known=[r.document() for r in made],
        )
    assert (caught.value.reason, caught.value.index) == ("INVALID_ARGUMENT_FORMAT", 1)


# -- the reporter: the audit log is the outbox --------------------------------------------------
class _Registry:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def current(self) -> Registry:
        return self.registry


class _Owner:
    """The owner's gateway, as the reporter's peer pool reaches it: answers each batch with
    `answers.pop(0)` (an exception to raise, or None to accept it), and keeps what it got."""

    def __init__(self, *answers: Exception | None) -> None:
        self.answers = list(answers)
        self.batches: list[list[str]] = []

    async def ReportAccess(
        self, request: exchange_pb2.ReportAccessRequest, timeout: float
    ) -> exchange_pb2.ReportAccessResponse:
        self.batches.append([r.request_id for r in request.reports])
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer
        n = len(request.reports)
        return exchange_pb2.ReportAccessResponse(
            accepted=n, audit_ids=[f"audit.tongban/330000#{i}" for i in range(n)]
        )

    async def call(
        self,
        region: str,
        make: Callable[[Any], Awaitable[exchange_pb2.ReportAccessResponse]],
        *,
        timeout_seconds: float,
    ) -> exchange_pb2.ReportAccessResponse:
        assert region == "330000"
        return await make(self)


def _rpc_error(code: grpc.StatusCode, reason: str = "", index: int | None = None) -> Exception:
    trailing: tuple[tuple[str, bytes], ...] = ()
    if reason:
        detail = any_pb2.Any()
        metadata = {"index": str(index)} if index is not None else {}
        detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="tongban", metadata=metadata))
        status = status_pb2.Status(code=code.value[0], message="refused", details=[detail])
        trailing = (("grpc-status-details-bin", status.SerializeToString()),)
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), "refused")


async def _reporter(
    fed: Federation, registry: Registry, owner: _Owner, **options: Any
) -> tuple[AccessReporter, AuditLog, MemoryAuditStore]:
    store = MemoryAuditStore()
    audit = AuditLog(store, origin="audit.tongban/510000", key_name="audit.tongban/510000",
                     key=ed25519.Ed25519PrivateKey.generate())  # fmt: skip
    reporter = AccessReporter(
        region="510000",
        registry=_Registry(registry),  # type: ignore[arg-type]
        peers=owner,  # type: ignore[arg-type]
        audit=audit,
        key=audit_key(fed, "510000")[0],
        backoff_min=0,
        backoff_max=0,
        **options,
    )
    return reporter, audit, store


async def _hit(reporter: AccessReporter, audit: AuditLog, n: int, owner: str = "330000") -> int:
    """A hit recorded as the query path records it: the record and its report together."""
    appended = await audit.append(
        make_record(n), reporter.outbound(owner, report(request_id=f"r{n}"))
    )
    reporter.recorded(owner)
    return appended.index


async def test_reports_leave_the_log_in_order_and_the_cursor_moves_only_once_acknowledged(
    fed: Federation, registry: Registry
) -> None:
    owner = _Owner(_rpc_error(grpc.StatusCode.UNAVAILABLE, "PEER_UNAVAILABLE"))
    reporter, audit, store = await _reporter(fed, registry, owner, batch_size=2)
    for n in range(5):
        await _hit(reporter, audit, n)
    assert await reporter.flush() == 0  # the owner could not take them: nothing moved
    assert [p.index for p in await store.outbox("330000", 10)] == [0, 1, 2, 3, 4]
    assert reporter.counters.failures == 1
    assert await reporter.flush() == 5
    assert owner.batches == [["r0", "r1"], ["r0", "r1"], ["r2", "r3"], ["r4"]]
    assert await store.outbox_backlog() == {}
    assert reporter.counters.accepted == 5
    assert reporter.backlog == {"330000": 0}


async def test_a_report_the_owner_refused_for_good_is_passed_after_the_ones_before_it(
    fed: Federation, registry: Registry
) -> None:
    refused = _rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "REPORT_ANSWER_UNKNOWN", index=2)
    first = _rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "REPORT_ANSWER_UNKNOWN", index=0)
    owner = _Owner(refused, None, first, None)
    reporter, audit, store = await _reporter(fed, registry, owner)
    for n in range(5):
        await _hit(reporter, audit, n)
    assert await reporter.flush() == 4
    assert owner.batches == [
        ["r0", "r1", "r2", "r3", "r4"],  # refused at r2
        ["r0", "r1"],  # the ones before it, alone
        ["r2", "r3", "r4"],  # r2 is the oldest now, refused again: passed, never resent
        ["r3", "r4"],
    ]
    assert reporter.counters.refused == 1
    assert await store.outbox_backlog() == {}


async def test_a_stored_report_that_does_not_read_back_is_set_aside_loudly(
    fed: Federation, registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    owner = _Owner()
    reporter, audit, store = await _reporter(fed, registry, owner)
    await audit.append(make_record(0), Outbound("330000", b'{"not": "a report"}'))
    await _hit(reporter, audit, 1)
    assert await reporter.flush() == 1
    assert owner.batches == [["r1"]]
    assert reporter.counters.refused == 1
    assert "audit record 0" in caplog.text
    assert "cannot be read back" in caplog.text
    assert await store.outbox_backlog() == {}


async def test_hits_are_not_answered_locally_beyond_the_backlog_bound_or_once_stopping(
    fed: Federation, registry: Registry
) -> None:
    owner = _Owner(*[_rpc_error(grpc.StatusCode.UNAVAILABLE, "PEER_UNAVAILABLE")] * 3)
    reporter, audit, _ = await _reporter(fed, registry, owner, max_backlog=2)
    assert reporter.accepting("330000")
    await _hit(reporter, audit, 0)
    await _hit(reporter, audit, 1)
    assert not reporter.accepting("330000")  # then asked of the owner, like a miss
    assert reporter.accepting("500000")
    await reporter.flush()  # what the log holds is what counts
    assert reporter.backlog == {"330000": 2}
    await reporter.close(timeout=0.5)
    assert not reporter.accepting("500000")


async def test_the_reporter_forgets_owners_nothing_is_waiting_for(
    fed: Federation, registry: Registry
) -> None:
    # A reporter that could not deliver to many owners, whose reports then left the outbox
    # (withdrawn, or delivered by another replica on the same log): nothing is kept for them.
    reporter, audit, store = await _reporter(fed, registry, _Owner())
    reporter._registry = _NoRegistry()  # type: ignore[assignment]  # every send fails at once
    owners = [f"{n:06d}" for n in range(100_000, 100_300)]
    indices = [await _hit(reporter, audit, n, owner) for n, owner in enumerate(owners)]
    assert await reporter.flush() == 0
    assert reporter.counters.failures == len(owners)
    for owner, index in zip(owners, indices, strict=True):
        await store.acknowledge(owner, index)
    await reporter.flush()
    assert reporter._retry_at == {}
    assert reporter._waiting == {}
    assert reporter.backlog == {}


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
    record = sealed_answer(credentials_pb2.SealedRecord(jws="a.b.c", payload=b"{}"))
    key = _PassedSeals.key(record, 7, "330000")
    assert key != _PassedSeals.key(record, 8, "330000")
    assert key != _PassedSeals.key(record, 7, "500000")
    assert key != _PassedSeals.key(
        sealed_answer(credentials_pb2.SealedRecord(jws="a.b.c", payload=b"[]")), 7, "330000"
    )
    # a GB/T 38540 seal is part of the key too: another SES_Signature over the same payload is
    # another key, and never the key of a JWS
    gbt = credentials_pb2.SEAL_FORMAT_GBT38540
    ses = sealed_answer(credentials_pb2.SealedRecord(format=gbt, ses_signature=b"1", payload=b"{}"))
    other = sealed_answer(
        credentials_pb2.SealedRecord(format=gbt, ses_signature=b"2", payload=b"{}")
    )
    assert len({key, _PassedSeals.key(ses, 7, "330000"), _PassedSeals.key(other, 7, "330000")}) == 3
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
    record = sealed_answer(credentials_pb2.SealedRecord(jws="a.b.c", payload=b"{}"))
    for version in range(1000):
        memo.put(_PassedSeals.key(record, version, "330000"), ())
    now[0] = 5.0
    memo.put(_PassedSeals.key(record, 1000, "330000"), ())
    assert len(memo._passed) == 1


class _NoRegistry:
    def current(self) -> Registry:
        raise RegistryUnavailable("no registry snapshot has been loaded yet")


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-21T09:30:45.123456Z",
        "2024-02-29T23:59:59.999999Z",
        "2026-02-29T00:00:00.000000Z",  # no such day
        "2026-13-01T00:00:00.000000Z",
        "2026-11-21T24:00:00.000000Z",
        "2026-11-21T23:59:60.000000Z",
        "0000-01-01T00:00:00.000000Z",
        "2026-11-21T9:30:45.123456Z",  # strptime's own leniency: one digit
        "2026-11-21T09:30:45.12Z",
        "2026-11-21T09:30:45.123456",
        "２０２６-11-21T09:30:45.123456Z",
    ],
)
def test_times_parse_as_strptime_parses_them(text: str) -> None:
    """The exact form is parsed without strptime: same times, same refusals."""
    from gateway.reports._format import ReportFormatError, parse_time

    try:
        expected: object = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        expected = ReportFormatError
    try:
        got: object = parse_time(text, "accessed_at")
    except ReportFormatError:
        got = ReportFormatError
    assert got == expected
