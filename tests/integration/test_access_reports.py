"""Requester-side caches (cache_scope "requester") and Peer.ReportAccess, over real channels:
three gateways, their demo data systems, real Redis, SQLite audit logs, and a pseudonym key of
its own for each region (the owner finds reported hits under its own pseudonym all the same).

- a repeat of a requester-scope query is answered by the requesting gateway alone (no
  Peer.Forward), with the owner's sealed bytes, and reported to the owner, whose audit log and
  data tracker (SubjectAccess) then show it;
- provider-scope datasets behave as before (every query reaches the owner);
- the decision still comes first on a hit: a denied query never gets the cached answer;
- forged, unsigned, wrongly signed and misdirected batches, and reports the owner never allowed,
  are refused with their reasons (never UNKNOWN), recorded as denied; a valid batch sent twice
  is recorded once;
- a graceful stop sends the reports still waiting; a requester that dies with reports not
  delivered loses none of them: its audit log is the outbox, and the next start on that log
  delivers them (Redis holds none of them).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import secrets
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from fault_support import metric_value, records, running_gateways
from query_support import CALL_TIMEOUT, Cluster, bearer, request
from support import Federation, credentials_as, error_info, eventually

from gateway.audit import AuditQuery, AuditRecord, Outcome, pseudonymize
from gateway.config import GatewayConfig
from gateway.reports import (
    REPORT_TYPE,
    AccessReport,
    AccessReporter,
    batch_payload,
    sign_batch,
)
from gateway.server import create_gateway
from registry import KeyState, KeyUsage
from signer import load_private_key
from tongban.v1 import (
    common_pb2,
    exchange_pb2,
    exchange_pb2_grpc,
    oversight_pb2,
    oversight_pb2_grpc,
)

pytestmark = pytest.mark.integration

REDIS = "redis://127.0.0.1:6379/0"
OWNER = "330000"  # 浙江: owns market.business_licence (cache_scope "requester")
REQUESTER = "510000"  # 四川
LICENCE = ("market.business_licence", "LICENCE-VERIFY")
LICENCE_FIELDS = (
    "address",
    "business_scope",
    "company_name",
    "established_on",
    "legal_representative",
    "registered_capital",
    "status",
    "uscc",
)
REPORT_WAIT = 15.0  # seconds: a flush period (1 s) plus delivery, on a loaded 2-core machine


def own_pseudonym_keys(region: str, config: GatewayConfig) -> GatewayConfig:
    """Each region its own pseudonym key (the dev PKI shares one)."""
    assert config.audit is not None
    key = hashlib.sha256(f"pseudonym key of {region} {id(config)}".encode()).digest()
    return dataclasses.replace(config, audit=dataclasses.replace(config.audit, pseudonym_key=key))


@pytest.fixture
async def cluster(federation: Federation, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_gateways(
        federation, tmp_path, redis_url=REDIS, configure=own_pseudonym_keys
    ) as made:
        yield made


def pseudonym_key(cluster: Cluster, region: str) -> bytes:
    config = cluster.gateways[region].config
    assert config.audit is not None
    return config.audit.pseudonym_key


async def audited(cluster: Cluster, region: str, rpc: str | None = None) -> list[AuditRecord]:
    audit = cluster.gateways[region].audit
    assert audit is not None
    found = [record for _, record in await audit.store.query(AuditQuery(limit=10_000))]
    return [r for r in found if rpc is None or r.rpc == rpc]


async def ask(
    cluster: Cluster,
    agency: str,
    query: exchange_pb2.QueryRequest,
    token: str | None = None,
) -> exchange_pb2.QueryResponse:
    async with cluster.exchange(agency) as stub:
        return await stub.Query(
            query, metadata=bearer(token or cluster.token(agency)), timeout=CALL_TIMEOUT
        )


def licence(
    cluster: Cluster, n: int = 0, *, purpose: str = LICENCE[1], **kwargs: Any
) -> exchange_pb2.QueryRequest:
    kwargs.setdefault("case_id", "")
    subject = cluster.subject(OWNER, LICENCE[0], n=n)
    return request(OWNER, LICENCE[0], purpose, subject, **kwargs)


def forwards(gateway: Any) -> float:
    """Peer.Forward calls this gateway served (its own grpc_server_handled_total)."""
    value = gateway.metrics.registry.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_service": "tongban.v1.Peer",
            "grpc_method": "Forward",
            "grpc_type": "unary",
            "grpc_code": "OK",
        },
    )
    return float(value or 0.0)


async def test_a_requester_scope_repeat_is_answered_locally_and_reported_to_the_owner(
    cluster: Cluster,
) -> None:
    subject = cluster.subject(OWNER, LICENCE[0])
    owner, requester = cluster.gateways[OWNER], cluster.gateways[REQUESTER]
    first = await ask(cluster, "sc.amr", licence(cluster))
    assert forwards(owner) == 1
    second = await ask(cluster, "sc.amr", licence(cluster))
    third = await ask(cluster, "sc.hsa", licence(cluster))  # another agency of the region
    assert (first.cache_hit, second.cache_hit, third.cache_hit) == (False, True, True)
    assert forwards(owner) == 1, "a hit must not reach the owner"
    assert second.record == first.record == third.record  # the owner's sealed bytes, unchanged
    assert tuple(second.fields) == LICENCE_FIELDS
    assert second.audit_id.startswith(f"audit.tongban/{REQUESTER}#")
    assert requester.query_path is not None
    assert requester.query_path.seal_memo.hits >= 1  # the second hit did not verify again

    # The requester audits each hit itself, under its own pseudonym.
    mine = await audited(cluster, REQUESTER, "/tongban.v1.DataExchange/Query")
    assert [(r.outcome, r.cache_hit, r.caller_agency) for r in mine] == [
        (Outcome.ALLOWED, False, "sc.amr"),
        (Outcome.ALLOWED, True, "sc.amr"),
        (Outcome.ALLOWED, True, "sc.hsa"),
    ]
    assert {r.subject for r in mine} == {pseudonymize(subject, pseudonym_key(cluster, REQUESTER))}

    # The owner records both hits soon, under its own pseudonym of the subject.
    async def reported() -> list[AuditRecord]:
        return await audited(cluster, OWNER, "/tongban.v1.Peer/ReportAccess")

    deadline = asyncio.get_running_loop().time() + REPORT_WAIT
    while len(await reported()) < 2:
        assert asyncio.get_running_loop().time() < deadline, "the hits were not reported"
        await asyncio.sleep(0.05)
    hits = await reported()
    owners_pseudonym = pseudonymize(subject, pseudonym_key(cluster, OWNER))
    assert owners_pseudonym != pseudonymize(subject, pseudonym_key(cluster, REQUESTER))
    digest = hashlib.sha256(first.record.jws.encode()).hexdigest()
    assert sorted((r.caller_agency, r.request_id, r.time) for r in hits) == sorted(
        (r.caller_agency, r.request_id, r.time) for r in mine[1:]
    )
    for record in hits:
        assert (record.outcome, record.cache_hit, record.caller_region) == (
            Outcome.ALLOWED,
            True,
            REQUESTER,
        )
        assert (record.subject, record.sealed_digest, record.dataset) == (
            owners_pseudonym,
            digest,
            LICENCE[0],
        )
        assert record.fields == LICENCE_FIELDS
        assert record.agreement_id == "LICENCE-ZJ-2026"
        assert subject not in record.canonical.decode()
    reporter = requester.query_path.reporter
    assert reporter is not None
    # The owner's records are durable before its answer reaches the requester: wait for that too.
    while reporter.counters.accepted < 2:
        assert asyncio.get_running_loop().time() < deadline, reporter.counters
        await asyncio.sleep(0.05)
    assert reporter.counters.accepted == 2

    # The citizen's data tracker on the owner lists all three accesses.
    async with grpc.aio.secure_channel(
        f"localhost:{cluster.ports[OWNER]}", credentials_as(cluster.fed, "zj.data", OWNER)
    ) as channel:
        tracker = await oversight_pb2_grpc.OversightStub(channel).SubjectAccess(
            oversight_pb2.SubjectAccessRequest(subject_id=subject), timeout=CALL_TIMEOUT
        )
    assert sorted(
        (e.requester_agency, e.requester_region, e.outcome, e.dataset) for e in tracker.entries
    ) == [
        ("sc.amr", REQUESTER, common_pb2.OUTCOME_ALLOWED, LICENCE[0]),
        ("sc.amr", REQUESTER, common_pb2.OUTCOME_ALLOWED, LICENCE[0]),
        ("sc.hsa", REQUESTER, common_pb2.OUTCOME_ALLOWED, LICENCE[0]),
    ]
    # Both logs still verify.
    for region in (OWNER, REQUESTER):
        audit = cluster.gateways[region].audit
        assert audit is not None
        assert (await audit.verify()).intact


async def test_a_provider_scope_dataset_is_still_answered_by_its_owner_every_time(
    cluster: Cluster,
) -> None:
    subject = cluster.subject(OWNER, "si.participation")
    first = await ask(
        cluster, "sc.hrss", request(OWNER, "si.participation", "SI-TRANSFER", subject)
    )
    second = await ask(
        cluster, "sc.hrss", request(OWNER, "si.participation", "SI-TRANSFER", subject)
    )
    assert (first.cache_hit, second.cache_hit) == (False, True)  # the owner's cache
    assert forwards(cluster.gateways[OWNER]) == 2
    served = await audited(cluster, OWNER, "/tongban.v1.Peer/Forward")
    assert [(r.cache_hit, r.outcome) for r in served] == [
        (False, Outcome.ALLOWED),
        (True, Outcome.ALLOWED),
    ]
    await asyncio.sleep(1.5)  # a flush period: nothing is reported for provider-scope data
    assert await audited(cluster, OWNER, "/tongban.v1.Peer/ReportAccess") == []


async def test_the_decision_comes_first_on_a_hit(cluster: Cluster) -> None:
    await ask(cluster, "sc.amr", licence(cluster))  # now in 四川's cache
    assert (await ask(cluster, "sc.amr", licence(cluster))).cache_hit
    refusals: dict[str, tuple[str, exchange_pb2.QueryRequest, str]] = {
        "TOKEN_EXPIRED": (
            "sc.amr",
            licence(cluster),
            cluster.token("sc.amr", now=datetime.now(UTC) - timedelta(minutes=10)),
        ),
        "FIELD_NOT_ALLOWED": (
            "sc.amr",
            licence(cluster, fields=(*LICENCE_FIELDS, "contact_phone")),
            "",
        ),
        "PURPOSE_NOT_APPROVED": ("sc.amr", licence(cluster, purpose="SI-TRANSFER"), ""),
        "NOT_AUTHORISED_ROLE": ("sc.data", licence(cluster), ""),
    }
    replayed = licence(cluster)
    await ask(cluster, "sc.amr", replayed)
    refusals["REQUEST_REPLAYED"] = ("sc.amr", replayed, "")
    before = len(await audited(cluster, REQUESTER, "/tongban.v1.DataExchange/Query"))
    for reason, (agency, query, token) in refusals.items():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ask(cluster, agency, query, token or None)
        assert error_info(caught.value).reason == reason
        assert "uscc" not in (caught.value.details() or "")
    mine = (await audited(cluster, REQUESTER, "/tongban.v1.DataExchange/Query"))[before:]
    assert [(r.outcome, r.reason, r.cache_hit) for r in mine] == [
        (Outcome.DENIED, reason, False) for reason in refusals
    ]
    assert forwards(cluster.gateways[OWNER]) == 1
    await asyncio.sleep(1.5)  # only the two hits are reported, never a refusal
    reported = await audited(cluster, OWNER, "/tongban.v1.Peer/ReportAccess")
    assert len(reported) == 2
    assert all(r.outcome is Outcome.ALLOWED for r in reported)


# -- the owner side: forged, misdirected and unfounded reports --------------------------------
class Reporting:
    """Sends hand-made Peer.ReportAccess calls to 浙江's gateway."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.fed = cluster.fed
        (record,) = self.fed.inventory().find(REQUESTER, KeyUsage.AUDIT, KeyState.ACTIVE)
        self.kid = record.kid
        key = load_private_key(self.fed.pki / record.private_key)
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        self.key = key

    def key_of(self, region: str) -> tuple[ed25519.Ed25519PrivateKey, str]:
        (record,) = self.fed.inventory().find(region, KeyUsage.AUDIT, KeyState.ACTIVE)
        key = load_private_key(self.fed.pki / record.private_key)
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        return key, record.kid

    def report(self, **changes: Any) -> AccessReport:
        subject = self.cluster.subject(OWNER, LICENCE[0])
        base = AccessReport(
            request_id=f"req-{secrets.token_hex(8)}",
            caller_agency="sc.amr",
            caller_region=REQUESTER,
            caller_operator="经办人 张三",
            caller_thumbprint=self.cluster.thumbprint("sc.amr"),
            dataset=LICENCE[0],
            purpose=LICENCE[1],
            case_id="",
            subject_pseudonym=pseudonymize(subject, pseudonym_key(self.cluster, OWNER)),
            fields=LICENCE_FIELDS,
            accessed_at=datetime.now(UTC),
            sealed_digest=hashlib.sha256(b"an answer never given").hexdigest(),
            answer_audit_id=f"audit.tongban/{OWNER}#0",
        )
        return dataclasses.replace(base, **changes)

    def jws(
        self,
        reports: list[AccessReport],
        *,
        key: ed25519.Ed25519PrivateKey | None = None,
        kid: str | None = None,
        owner: str = OWNER,
        reporting: str = REQUESTER,
    ) -> str:
        payload = batch_payload(
            reporting_region=reporting,
            owner_region=owner,
            batch_id=secrets.token_hex(8),
            issued_at=datetime.now(UTC),
            reports=reports,
        )
        return sign_batch(payload, key or self.key, kid or self.kid)

    async def send(
        self,
        jws: str,
        reports: list[AccessReport] | None = None,
        *,
        reporting_region: str = REQUESTER,
        identity: str = REQUESTER,
        messages: list[exchange_pb2.AccessReport] | None = None,
    ) -> exchange_pb2.ReportAccessResponse:
        async with grpc.aio.secure_channel(
            f"localhost:{self.cluster.ports[OWNER]}", credentials_as(self.fed, identity, OWNER)
        ) as channel:
            return await exchange_pb2_grpc.PeerStub(channel).ReportAccess(
                exchange_pb2.ReportAccessRequest(
                    jws=jws,
                    reports=messages
                    if messages is not None
                    else [r.message() for r in reports or []],
                    reporting_region=reporting_region,
                ),
                timeout=CALL_TIMEOUT,
            )

    async def refused(self, *args: Any, **kwargs: Any) -> tuple[grpc.StatusCode, str, str]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await self.send(*args, **kwargs)
        info = error_info(caught.value)
        return caught.value.code(), info.reason, info.metadata.get("index", "")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_forged_misdirected_and_unfounded_reports_are_refused_with_their_reasons(
    cluster: Cluster,
) -> None:
    r = Reporting(cluster)
    # A real hit, to have an answer the owner really gave 四川.
    given = await ask(cluster, "sc.amr", licence(cluster))
    owner_audit = cluster.gateways[OWNER].audit
    assert owner_audit is not None
    ((index, _),) = [
        (i, rec)
        for i, rec in await owner_audit.store.query(AuditQuery(limit=100))
        if rec.rpc == "/tongban.v1.Peer/Forward"
    ]
    real = r.report(
        sealed_digest=hashlib.sha256(given.record.jws.encode()).hexdigest(),
        answer_audit_id=f"{owner_audit.origin}#{index}",
    )
    good = r.jws([real])
    header = {"alg": "EdDSA", "typ": REPORT_TYPE, "kid": r.kid, "x5t#S256": r.kid}
    body = good.split(".")[1]
    cq_key, cq_kid = r.key_of("500000")
    unauth = grpc.StatusCode.UNAUTHENTICATED
    cases: dict[str, tuple[Callable[[], Any], tuple[grpc.StatusCode, str, str]]] = {
        "unsigned": (
            lambda: r.refused(good.rsplit(".", 1)[0] + ".", [real]),
            (unauth, "REPORT_SIGNATURE_INVALID", ""),
        ),
        "alg none": (
            lambda: r.refused(
                f"{b64(json.dumps({**header, 'alg': 'none'}).encode())}.{body}.", [real]
            ),
            (unauth, "REPORT_SIGNATURE_INVALID", ""),
        ),
        "not a JWS": (
            lambda: r.refused("garbage", [real]),
            (unauth, "REPORT_SIGNATURE_INVALID", ""),
        ),
        "empty": (lambda: r.refused("", [real]), (unauth, "REPORT_SIGNATURE_INVALID", "")),
        "signed by a key the registry does not hold": (
            lambda: r.refused(r.jws([real], key=ed25519.Ed25519PrivateKey.generate()), [real]),
            (unauth, "REPORT_SIGNATURE_INVALID", ""),
        ),
        "signed by another region's audit key": (
            lambda: r.refused(r.jws([real], key=cq_key, kid=cq_kid), [real]),
            (unauth, "REPORT_SIGNATURE_INVALID", ""),
        ),
        "a payload changed after signing": (
            lambda: r.refused(
                ".".join(
                    (
                        good.split(".")[0],
                        b64(base64.urlsafe_b64decode(body + "==").replace(b"sc.amr", b"sc.hsa")),
                        good.split(".")[2],
                    )
                ),
                [real],
            ),
            (unauth, "REPORT_SIGNATURE_INVALID", ""),
        ),
        "reporting region other than the caller's": (
            lambda: r.refused(good, [real], reporting_region="500000"),
            (grpc.StatusCode.PERMISSION_DENIED, "NOT_AUTHORISED_ROLE", ""),
        ),
        "sent by an agency, not a gateway": (
            lambda: r.refused(good, [real], identity="sc.amr"),
            (grpc.StatusCode.PERMISSION_DENIED, "NOT_AUTHORISED_ROLE", ""),
        ),
        "signed for another owner": (
            lambda: r.refused(r.jws([real], owner="500000"), [real]),
            (grpc.StatusCode.INVALID_ARGUMENT, "REPORT_PAYLOAD_MISMATCH", ""),
        ),
        "reports beside the JWS differ from the signed ones": (
            lambda: r.refused(good, [dataclasses.replace(real, case_id="CASE-X")]),
            (grpc.StatusCode.INVALID_ARGUMENT, "REPORT_PAYLOAD_MISMATCH", ""),
        ),
        "reports beside the JWS that are not even well formed": (
            lambda: r.refused(
                good,
                messages=[
                    exchange_pb2.AccessReport(request_id="x" * 5000, accessed_at={"seconds": 2**62})
                ],
            ),
            (grpc.StatusCode.INVALID_ARGUMENT, "REPORT_PAYLOAD_MISMATCH", ""),
        ),
        "too large": (
            lambda: r.refused("a" * 600_000, [real]),
            (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_TOO_LARGE", ""),
        ),
        "a provider-scope dataset": (
            lambda: r.refused(
                r.jws([real, r.report(dataset="si.participation", purpose="SI-TRANSFER")])
            ),
            (grpc.StatusCode.PERMISSION_DENIED, "CACHE_NOT_ALLOWED", "1"),
        ),
        "an unknown dataset": (
            lambda: r.refused(r.jws([r.report(dataset="no.such")])),
            (grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_DATASET", "0"),
        ),
        "a field the purpose does not allow": (
            lambda: r.refused(
                r.jws([r.report(fields=tuple(sorted((*LICENCE_FIELDS, "contact_phone"))))])
            ),
            (grpc.StatusCode.PERMISSION_DENIED, "FIELD_NOT_ALLOWED", "0"),
        ),
        "an agency of another region": (
            lambda: r.refused(r.jws([r.report(caller_agency="cq.amr")])),
            (grpc.StatusCode.PERMISSION_DENIED, "NOT_AUTHORISED_ROLE", "0"),
        ),
        "an answer the owner never gave": (
            lambda: r.refused(r.jws([r.report()])),
            (grpc.StatusCode.PERMISSION_DENIED, "REPORT_ANSWER_UNKNOWN", "0"),
        ),
        "another answer's record": (
            lambda: r.refused(r.jws([r.report(answer_audit_id=real.answer_audit_id)])),
            (grpc.StatusCode.PERMISSION_DENIED, "REPORT_ANSWER_UNKNOWN", "0"),
        ),
        "a record of another log": (
            lambda: r.refused(
                r.jws([dataclasses.replace(real, answer_audit_id="audit.tongban/500000#0")])
            ),
            (grpc.StatusCode.PERMISSION_DENIED, "REPORT_ANSWER_UNKNOWN", "0"),
        ),
        "another subject": (
            lambda: r.refused(
                r.jws(
                    [dataclasses.replace(real, subject_pseudonym=hashlib.sha256(b"x").hexdigest())]
                )
            ),
            (grpc.StatusCode.PERMISSION_DENIED, "REPORT_ANSWER_UNKNOWN", "0"),
        ),
        "an access before the answer was given": (
            lambda: r.refused(
                r.jws(
                    [dataclasses.replace(real, accessed_at=datetime.now(UTC) - timedelta(hours=2))]
                )
            ),
            (grpc.StatusCode.PERMISSION_DENIED, "REPORT_ANSWER_UNKNOWN", "0"),
        ),
        "an access in the future": (
            lambda: r.refused(
                r.jws(
                    [dataclasses.replace(real, accessed_at=datetime.now(UTC) + timedelta(hours=1))]
                )
            ),
            (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT_FORMAT", "0"),
        ),
        "an access before the agreement": (
            lambda: r.refused(
                r.jws([dataclasses.replace(real, accessed_at=datetime(2025, 6, 1, tzinfo=UTC))])
            ),
            (grpc.StatusCode.PERMISSION_DENIED, "AGREEMENT_EXPIRED", "0"),
        ),
    }
    for name, (send, expected) in cases.items():
        assert await send() == expected, name
    denied = await audited(cluster, OWNER, "/tongban.v1.Peer/ReportAccess")
    assert len(denied) == len(cases)
    assert all(d.outcome is Outcome.DENIED for d in denied)
    assert [d.reason for d in denied] == [e[1] for _, e in cases.values()]
    # The refused reports that were authentic are recorded with what they claimed.
    unknown = next(d for d in denied if d.reason == "REPORT_ANSWER_UNKNOWN")
    assert (unknown.caller_agency, unknown.dataset, unknown.subject) == (
        "sc.amr",
        LICENCE[0],
        real.subject_pseudonym,
    )

    # The genuine batch is accepted, and recorded once however often it is sent.
    accepted = await r.send(good, [real])
    again = await r.send(good, [real])
    twice_more = await r.send(r.jws([real]), [])  # re-signed, without the convenience copy
    assert accepted.accepted == again.accepted == twice_more.accepted == 1
    assert list(accepted.audit_ids) == list(again.audit_ids) == list(twice_more.audit_ids)
    allowed = [
        d
        for d in await audited(cluster, OWNER, "/tongban.v1.Peer/ReportAccess")
        if d.outcome is Outcome.ALLOWED
    ]
    assert len(allowed) == 1
    assert (allowed[0].time, allowed[0].request_id) == (real.accessed_at, real.request_id)


# -- delivery ------------------------------------------------------------------------------------
async def test_a_graceful_stop_flushes_the_reports_still_waiting(
    federation: Federation, tmp_path: Path
) -> None:
    """The reporter is held back, the requester stopped gracefully: the stop sends them."""
    async with running_gateways(federation, tmp_path, configure=own_pseudonym_keys) as cluster:
        requester = cluster.gateways[REQUESTER]
        assert requester.query_path is not None
        reporter = requester.query_path.reporter
        assert reporter is not None
        assert reporter.audit.durable  # SQLite: the outbox outlives the process
        reporter.flush_seconds = 3600.0  # only the stop sends them
        # its loop may be in a wait begun with the default: end that one now (nothing to send
        # yet), so that the next wait is the long one (under load the default ran out during
        # the queries below, and the reports went before the stop)
        reporter._wake.set()
        await asyncio.sleep(0.1)
        await ask(cluster, "sc.amr", licence(cluster))
        hits = [await ask(cluster, "sc.amr", licence(cluster)) for _ in range(3)]
        assert all(h.cache_hit for h in hits)
        await asyncio.sleep(0.3)
        assert await audited(cluster, OWNER, "/tongban.v1.Peer/ReportAccess") == []
        assert await reporter.audit.outbox_backlog() == {OWNER: 3}
        requester.observe()  # what monitoring sees meanwhile
        assert metric_value(requester, "tongban_access_reports_waiting", owner=OWNER) == 3
        await requester.stop()
        del cluster.gateways[REQUESTER]
        reported = await audited(cluster, OWNER, "/tongban.v1.Peer/ReportAccess")
        assert len(reported) == 3
        assert reporter.counters.accepted == 3


async def test_reports_of_a_requester_that_died_are_delivered_by_its_next_start(
    federation: Federation, tmp_path: Path
) -> None:
    """The owner is down when the hits are answered (the requester tries, fails, backs off),
    then that requester dies without a flush; the owner comes back, and the requesting region's
    gateway, started again on the same audit log, delivers them. Redis holds none of them."""
    async with running_gateways(
        federation, tmp_path, redis_url=REDIS, configure=own_pseudonym_keys
    ) as cluster:
        first = cluster.gateways[REQUESTER]
        assert first.query_path is not None
        assert first.query_path.reporter is not None
        dying: AccessReporter = first.query_path.reporter
        await ask(cluster, "sc.amr", licence(cluster))  # cached in 四川
        owner = cluster.gateways.pop(OWNER)
        await owner.stop(0)
        hits = [await ask(cluster, "sc.amr", licence(cluster)) for _ in range(2)]
        assert all(h.cache_hit for h in hits)  # answered while the owner is down
        await eventually(lambda: dying.counters.failures >= 1, "a failed delivery", REPORT_WAIT)
        # The requester dies: its reporter stops, nothing is flushed.
        dying._closed = True  # a crash: close() must not flush
        await first.stop(0)
        del cluster.gateways[REQUESTER]
        # The owner comes back; 四川's gateway starts again on the same audit log.
        owner, _ = await create_gateway(owner.config)
        cluster.gateways[OWNER] = owner
        second, _ = await create_gateway(dataclasses.replace(first.config, listen="127.0.0.1:0"))
        cluster.gateways[REQUESTER] = second
        assert second.query_path is not None
        assert second.query_path.reporter is not None

        async def delivered() -> bool:
            return len(await audited(cluster, OWNER, "/tongban.v1.Peer/ReportAccess")) >= 2

        deadline = asyncio.get_running_loop().time() + REPORT_WAIT
        while not await delivered():
            assert asyncio.get_running_loop().time() < deadline, "the reports were lost"
            await asyncio.sleep(0.1)
        reported = await audited(cluster, OWNER, "/tongban.v1.Peer/ReportAccess")
        mine = await audited(cluster, REQUESTER, "/tongban.v1.DataExchange/Query")
        assert sorted(r.request_id for r in reported) == sorted(
            r.request_id for r in mine if r.cache_hit
        )
        assert second.audit is not None
        # the owner recorded them; the cursor moves once its answer is back
        while await second.audit.outbox_backlog():
            assert asyncio.get_running_loop().time() < deadline, "the cursor never moved"
            await asyncio.sleep(0.1)
        assert owner.audit is not None
        assert [r for r in await records(owner.audit) if r["outcome"] != "allowed"] == []
