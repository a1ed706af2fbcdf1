"""The Cases API and `Peer.DeliverCaseEvents` under hostile input, over real mTLS to three real
gateways on loopback (`query_support.running_cluster`, audit logs and case stores in SQLite):
every bad field of every request is a contract reason (never INTERNAL or UNKNOWN, never a
trace), refused calls store nothing, a case is invisible to whoever may not see it (the same
answer as an unknown id), a peer's forged, out-of-order or impossible events are refused, and
the applicant's id is in no log line, error message or audit record (docs/threats.md T28)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from case_support import APPLICANT, MEDICAL
from flow_support import audit_key, load_registry, seal_key
from query_support import Cluster, running_cluster
from redis.asyncio import Redis
from support import (
    Federation,
    RedisServer,
    channel,
    credentials_as,
    error_info,
)

from gateway.audit import AuditQuery
from gateway.cases import CaseEvent, EventKind, PartSpec, sign_event
from gateway.sealing import RegionSealer
from gateway.tokens import issue_token
from registry import KeyState, KeyUsage, Registry
from signer import load_private_key
from tongban.v1 import cases_pb2, cases_pb2_grpc, common_pb2, exchange_pb2, exchange_pb2_grpc

pytestmark = pytest.mark.integration

SC, CQ, ZJ = "510000", "500000", "330000"
OTHER_CITIZEN = "110105194912310011"  # another citizen, a valid check digit
BAD_CHECK_DIGIT = "110105194912310021"
TIMEOUT = 15.0
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNIMPLEMENTED}
REASONS = set(common_pb2.ErrorReason.keys())
EXPECTED = {
    "Get": {"CASE_NOT_FOUND"},
    "List": {"INVALID_ARGUMENT_FORMAT"},
    "Act": {
        "CASE_NOT_FOUND",
        "INVALID_ARGUMENT_FORMAT",
        "CASE_ACTION_NOT_ALLOWED",
        "CASE_PART_NOT_YOURS",
    },
}


@pytest.fixture
async def cluster(
    federation: Federation, tmp_path: Path, redis_server: RedisServer
) -> AsyncIterator[Cluster]:
    async with running_cluster(federation, tmp_path, redis_url=redis_server.url) as made:
        yield made


async def redis_holds(server: RedisServer, text: str) -> list[bytes]:
    """The keys of `server` whose name or (string) value holds `text`."""
    found = []
    raw = Redis.from_url(server.url)
    try:
        async for name in raw.scan_iter(match="*", count=100):
            value = await raw.get(name) if await raw.type(name) == b"string" else b""
            if text.encode() in name or text.encode() in (value or b""):
                found.append(name)
    finally:
        await raw.aclose()
    return found


def portal_token(cluster: Cluster, agency: str, region: str, applicant: str) -> str:
    (record,) = cluster.fed.inventory().find(region, KeyUsage.TOKEN, KeyState.ACTIVE)
    return issue_token(
        load_private_key(cluster.fed.pki / record.private_key),
        record.kid,
        region=region,
        operator="portal",
        agency=agency,
        thumbprint=cluster.thumbprint(agency),
        lifetime_seconds=300,
        now=datetime.now(UTC),
        applicant=applicant,
    )


class Caller:
    """A Cases stub as `agency` of `region` with its token (or an applicant's portal token)."""

    def __init__(self, cluster: Cluster, agency: str, region: str, applicant: str = "") -> None:
        self.channel = channel(cluster.ports[region], credentials_as(cluster.fed, agency, region))
        self.stub = cases_pb2_grpc.CasesStub(self.channel)
        bearer = (
            portal_token(cluster, agency, region, applicant) if applicant else cluster.token(agency)
        )
        self.metadata = (("authorization", f"Bearer {bearer}"),)

    async def call(self, method: str, request: Any) -> Any:
        return await getattr(self.stub, method)(request, metadata=self.metadata, timeout=TIMEOUT)

    async def refused(self, method: str, request: Any) -> tuple[grpc.StatusCode, str, str]:
        """(code, reason, message) of a call that must be refused with a contract reason."""
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await self.call(method, request)
        exc = caught.value
        assert exc.code() not in NEVER, (method, exc.code(), exc.details())
        info = error_info(exc)
        reason = info.reason
        assert reason in REASONS, (method, reason)
        for value in info.metadata.values():  # what the caller sent is not echoed raw
            assert len(value) <= 128
            assert APPLICANT not in value
        details = exc.details() or ""
        assert "Traceback" not in details
        assert APPLICANT not in details
        return exc.code(), reason, details

    async def close(self) -> None:
        await self.channel.close()


def material(m: Any, material_id: str | None = None) -> cases_pb2.Material:
    return cases_pb2.Material(
        material_id=m.material_id if material_id is None else material_id,
        content=m.content,
        signed_data=m.signed_data,
    )


async def sealed(
    fed: Federation, registry: Registry, region: str, data: bytes, *, detached: bool = False
) -> tuple[bytes, bytes]:
    """(content, signed_data) of `data` sealed now with `region`'s seal key."""
    key = seal_key(fed, region)
    made = await RegionSealer(region, {key.kid: key}).seal(
        registry,
        data,
        content_type="application/json",
        now=datetime.now(UTC) - timedelta(minutes=1),
        detached=detached,
    )
    return made.jws.encode(), data if detached else b""


async def materials(fed: Federation, registry: Registry) -> list[cases_pb2.Material]:
    card, _ = await sealed(fed, registry, CQ, b'{"credential_type": "id_card"}')
    form, signed = await sealed(fed, registry, SC, b"form", detached=True)
    return [
        cases_pb2.Material(material_id="id-card", content=card),
        cases_pb2.Material(material_id="filing-form", content=form, signed_data=signed),
    ]


def material_id(m: cases_pb2.Material, name: str) -> cases_pb2.Material:
    return cases_pb2.Material(material_id=name, content=m.content, signed_data=m.signed_data)


def submit(request_id: str, mats: list[cases_pb2.Material], **more: Any) -> Any:
    fields: dict[str, Any] = {
        "request_id": request_id,
        "matter_code": MEDICAL,
        "applicant_id": APPLICANT,
        "materials": mats,
        **more,
    }
    return cases_pb2.SubmitCaseRequest(**fields)


def page_token(case_id: str) -> str:
    """A page token as the service writes one, for a case id of the caller's choosing."""
    raw = json.dumps(["2026-12-07T08:00:00.000000Z", case_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def zip_bomb() -> bytes:
    """An OFD-looking zip whose one member inflates to 128 MiB."""
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("OFD.xml", b"<ofd:OFD xmlns:ofd='http://www.ofdspec.org/2016'/>")
        with z.open("Doc_0/Document.xml", "w", force_zip64=True) as member:
            chunk = b"\0" * (1 << 20)
            for _ in range(128):
                member.write(chunk)
    return out.getvalue()


def jws_json_many_signatures(n: int) -> bytes:
    sig = {"protected": "eyJhbGciOiJFUzI1NiJ9", "signature": "AAAA"}
    return json.dumps({"payload": "e30", "signatures": [sig] * n}).encode()


async def stored_cases(cluster: Cluster, region: str) -> int:
    cases = cluster.gateways[region].cases
    assert cases is not None
    return len(await cases.book.store.changes(0, 10_000))


async def test_every_bad_field_is_a_contract_reason_and_stores_nothing(
    cluster: Cluster, caplog: pytest.LogCaptureFixture, redis_server: RedisServer
) -> None:
    caplog.set_level(logging.DEBUG)
    fed = cluster.fed
    registry = load_registry(fed)
    good = await materials(fed, registry)
    window = Caller(cluster, "sc.hsa", SC)
    try:
        case = await window.call("Submit", submit("good-1", good))
        before = await stored_cases(cluster, SC)
        huge = "x" * (10 * 1024 * 1024)
        bad_submits = {
            "empty request_id": submit("", good),
            "long request_id": submit("r" * 200, good),
            "NUL request_id": submit("a\x00b", good),
            "citizen id as request_id": submit(APPLICANT, good),
            "empty matter": submit("m-1", good, matter_code=""),
            "NUL matter": submit("m-2", good, matter_code="000125\x002100"),
            "long matter": submit("m-3", good, matter_code="9" * 5000),
            "empty applicant": submit("a-1", good, applicant_id=""),
            "bad check digit": submit("a-2", good, applicant_id=BAD_CHECK_DIGIT),
            "RTL applicant": submit("a-3", good, applicant_id="\u202e" + APPLICANT),
            "control note": submit("n-1", good, note="a\x07b"),
            "RTL note": submit("n-2", good, note="\u202egnp.exe"),
            "10 MB note": submit("n-3", good, note=huge),
            "no materials": submit("x-1", []),
            "duplicate material": submit("x-2", [*good, good[1]]),
            "100 materials": submit(
                "x-3", [good[0]] + [material(good[1], f"m{i}") for i in range(99)]
            ),
            "long material id": submit("x-8", [good[0], material_id(good[1], "m" * 100_000)]),
            "citizen id as material id": submit("x-9", [good[0], material_id(good[1], APPLICANT)]),
            "NUL material id": submit("x-4", [good[0], material(good[1], "filing\x00form")]),
            "signed_data without content": submit(
                "x-5", [good[0], cases_pb2.Material(material_id="filing-form", signed_data=b"x")]
            ),
            "10,000 signatures": submit(
                "x-6",
                [
                    good[0],
                    cases_pb2.Material(
                        material_id="filing-form", content=jws_json_many_signatures(10_000)
                    ),
                ],
            ),
            "zip bomb": submit(
                "x-7", [good[0], cases_pb2.Material(material_id="filing-form", content=zip_bomb())]
            ),
        }
        seen: dict[str, tuple[grpc.StatusCode, str, str]] = {}
        for name, request in bad_submits.items():
            seen[name] = await window.refused("Submit", request)
        assert await stored_cases(cluster, SC) == before
        case_id = case.case_id
        bad_reads = {
            "Get": [
                cases_pb2.GetCaseRequest(case_id=""),
                cases_pb2.GetCaseRequest(case_id=case_id + "\x00"),
                cases_pb2.GetCaseRequest(case_id="\x00"),
                cases_pb2.GetCaseRequest(case_id=APPLICANT),
                cases_pb2.GetCaseRequest(case_id="\u202e" + case_id),
                cases_pb2.GetCaseRequest(case_id=huge[: 1024 * 1024]),
            ],
            "List": [
                cases_pb2.ListCasesRequest(page_token="!!!"),
                cases_pb2.ListCasesRequest(page_token="W10"),
                cases_pb2.ListCasesRequest(page_token=page_token(case_id + "\x00")),
                cases_pb2.ListCasesRequest(page_token=page_token(APPLICANT)),
                cases_pb2.ListCasesRequest(page_token=huge[:4096]),
                cases_pb2.ListCasesRequest(state=99),
                cases_pb2.ListCasesRequest(matter_code="\x00"),
                cases_pb2.ListCasesRequest(matter_code=huge[: 1024 * 1024]),
            ],
            "Act": [
                cases_pb2.ActRequest(request_id="act-1", case_id=case_id, part=1, action=99),
                cases_pb2.ActRequest(
                    request_id="act-2",
                    case_id=case_id,
                    part=2**32 - 1,
                    action=cases_pb2.CASE_ACTION_ACCEPT,
                ),
                cases_pb2.ActRequest(
                    request_id="act-3",
                    case_id=APPLICANT,
                    part=1,
                    action=cases_pb2.CASE_ACTION_ACCEPT,
                ),
                cases_pb2.ActRequest(
                    request_id="act-4", case_id="\x00", part=1, action=cases_pb2.CASE_ACTION_ACCEPT
                ),
                cases_pb2.ActRequest(
                    request_id="", case_id=case_id, part=1, action=cases_pb2.CASE_ACTION_ACCEPT
                ),
                cases_pb2.ActRequest(
                    request_id="act-5", case_id=case_id, part=1, action=cases_pb2.CASE_ACTION_ACCEPT
                ),  # not 510000's part
            ],
        }
        for method, requests in bad_reads.items():
            for request in requests:
                _, reason, _ = await window.refused(method, request)
                assert reason in EXPECTED[method], (method, request, reason)
        for request in (
            cases_pb2.WatchCasesRequest(case_id="\x00"),
            cases_pb2.WatchCasesRequest(case_id=APPLICANT),
        ):
            stream = window.stub.Watch(request, metadata=window.metadata, timeout=TIMEOUT)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stream.read()
            assert error_info(caught.value).reason == "CASE_NOT_FOUND"
        page = await window.call("List", cases_pb2.ListCasesRequest(page_size=10**6))
        assert [c.case_id for c in page.cases] == [case_id]
        assert await stored_cases(cluster, SC) == before
    finally:
        await window.close()
    for citizen in (APPLICANT, BAD_CHECK_DIGIT):  # whole, valid or not
        assert citizen not in caplog.text
    # the gateways run with Redis (their cache, replay window, quotas); a case keeps nothing
    # there today, and never the applicant's id
    assert await redis_holds(redis_server, APPLICANT) == []
    metrics = cluster.gateways[SC].metrics.registry
    labels = [
        value
        for family in metrics.collect()
        for sample in family.samples
        for value in sample.labels.values()
    ]
    assert labels
    assert all(APPLICANT not in value for value in labels)
    audit = cluster.gateways[SC].audit
    assert audit is not None
    records = [r for _, r in await audit.store.query(AuditQuery(limit=1000))]
    refused = [r for r in records if r.reason]
    assert len(refused) == len(bad_submits) + sum(map(len, bad_reads.values())) + 2
    assert all(APPLICANT not in r.canonical.decode() for r in records)
    assert all(BAD_CHECK_DIGIT not in r.canonical.decode() for r in records)
    assert all(
        r.case_id == "" or r.case_id == case_id or r.case_id.startswith("sha256:") for r in records
    )


async def test_a_case_is_invisible_to_whoever_may_not_see_it(cluster: Cluster) -> None:
    """Another region's agency, an uninvolved agency of the window's region, an applicant's
    portal token for another citizen: Get, Act and Watch answer exactly as for an unknown id,
    List shows nothing; the case's own applicant sees it."""
    registry = load_registry(cluster.fed)
    window = Caller(cluster, "sc.hsa", SC)
    made = await materials(cluster.fed, registry)
    case = await window.call("Submit", submit("vis-1", made))
    await window.call("Submit", submit("vis-2", made))
    page = await window.call("List", cases_pb2.ListCasesRequest(page_size=1))
    token = page.next_page_token
    assert token
    await window.close()
    outsiders = [
        Caller(cluster, "zj.hrss", ZJ),
        Caller(cluster, "sc.psb", SC),
        Caller(cluster, "sc.hsa", SC, applicant=OTHER_CITIZEN),
    ]
    own = Caller(cluster, "sc.hsa", SC, applicant=APPLICANT)
    try:
        unknown = f"{SC}-20261207-0000000000"
        for who in outsiders:
            answers = set()
            for case_id in (case.case_id, unknown):
                answers.add(await who.refused("Get", cases_pb2.GetCaseRequest(case_id=case_id)))
                act = cases_pb2.ActRequest(
                    request_id=f"v-{case_id[-4:]}", case_id=case_id, part=1,
                    action=cases_pb2.CASE_ACTION_ACCEPT,
                )  # fmt: skip
                refusal = await who.refused("Act", act)
                if who is not outsiders[2]:  # an applicant may not act at all
                    answers.add(refusal)
                stream = who.stub.Watch(
                    cases_pb2.WatchCasesRequest(case_id=case_id),
                    metadata=who.metadata,
                    timeout=TIMEOUT,
                )
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stream.read()
                answers.add((caught.value.code(), error_info(caught.value).reason,
                             caught.value.details() or ""))  # fmt: skip
            assert {reason for _, reason, _ in answers} == {"CASE_NOT_FOUND"}
            assert len({details for _, _, details in answers}) == 1  # no telling them apart
            listed = await who.call("List", cases_pb2.ListCasesRequest())
            assert list(listed.cases) == []
            # the window's own page token, tampered with or not, lists only what `who` sees
            listed = await who.call("List", cases_pb2.ListCasesRequest(page_token=token))
            assert list(listed.cases) == []
        seen = await own.call("Get", cases_pb2.GetCaseRequest(case_id=case.case_id))
        assert seen.case_id == case.case_id
    finally:
        for who in [*outsiders, own]:
            await who.close()


async def test_a_forged_submission_is_refused_by_the_receiving_gateway(
    cluster: Cluster,
) -> None:
    """四川's real gateway key and audit key make a submission whose parts the registry's
    matter does not have (浙江 made a part of a 川渝 case): 浙江's gateway refuses it
    CASE_EVENT_INVALID, audited, nothing kept; the true events are delivered as before."""
    registry = load_registry(cluster.fed)
    window = Caller(cluster, "sc.hsa", SC)
    case = await window.call("Submit", submit("forge-1", await materials(cluster.fed, registry)))
    await window.close()
    sc_cases = cluster.gateways[SC].cases
    assert sc_cases is not None
    (held,) = await sc_cases.book.events(case.case_id)
    sub = held.submission
    assert sub is not None
    forged = dataclasses.replace(
        held,
        case_id=case.case_id[:-1] + ("0" if case.case_id[-1] != "0" else "1"),
        submission=dataclasses.replace(sub, parts=(*sub.parts, PartSpec(ZJ, "assist"))),
    )
    key, kid = audit_key(cluster.fed, SC)
    request = exchange_pb2.DeliverCaseEventsRequest(
        events=[exchange_pb2.SignedCaseEvent(jws=sign_event(forged, key, kid))]
    )
    zj_cases = cluster.gateways[ZJ].cases
    assert zj_cases is not None
    async with channel(cluster.ports[ZJ], credentials_as(cluster.fed, SC, ZJ)) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await exchange_pb2_grpc.PeerStub(ch).DeliverCaseEvents(request, timeout=TIMEOUT)
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert error_info(caught.value).reason == "CASE_EVENT_INVALID"
    assert "parts are not its matter's" in (caught.value.details() or "")
    assert await zj_cases.book.store.changes(0, 100) == []


async def test_peer_deliveries_that_may_not_happen_are_refused(cluster: Cluster) -> None:
    """`Peer.DeliverCaseEvents` to 重庆's gateway, which holds a 川渝 case (四川 window, 重庆
    handles): from an agency, empty, too many, too large, from 浙江 (no part in the case) with
    四川's event or its own, 四川's event again with another body, 四川's third event before its
    second, 四川 acting on 重庆's part, an attachment the event does not name. Each is a
    contract reason, audited by 重庆 where it reached the book, and nothing is kept."""
    registry = load_registry(cluster.fed)
    window = Caller(cluster, "sc.hsa", SC)
    case = await window.call("Submit", submit("peer-1", await materials(cluster.fed, registry)))
    await window.close()
    cq_cases = cluster.gateways[CQ].cases
    sc_cases = cluster.gateways[SC].cases
    assert cq_cases is not None
    assert sc_cases is not None
    for _ in range(200):  # the window's deliverer brings the submission to 重庆
        held = await cq_cases.book.events(case.case_id)
        if held:
            break
        await asyncio.sleep(0.1)
    assert len(held) == 1
    (first,) = held
    sc_key, sc_kid = audit_key(cluster.fed, SC)
    zj_key, zj_kid = audit_key(cluster.fed, ZJ)
    accepted = CaseEvent(
        case_id=case.case_id, origin=SC, seq=2, seen=(), kind=EventKind.ACCEPTED,
        agency="sc.hsa", operator="x", at=first.at + timedelta(minutes=1), part=1,
    )  # fmt: skip

    def one(jws: str, attachments: Any = ()) -> Any:
        return exchange_pb2.DeliverCaseEventsRequest(
            events=[exchange_pb2.SignedCaseEvent(jws=jws, attachments=list(attachments))]
        )

    as_sc = [
        (one("x" * (64 * 1024 + 1)), "REQUEST_TOO_LARGE", ""),
        (exchange_pb2.DeliverCaseEventsRequest(), "REQUEST_TOO_LARGE", ""),
        (
            exchange_pb2.DeliverCaseEventsRequest(
                events=[exchange_pb2.SignedCaseEvent(jws="a.b.c")] * 65
            ),
            "REQUEST_TOO_LARGE",
            "",
        ),
        (one("not a jws"), "CASE_EVENT_INVALID", "compact JWS"),
        (
            one(sign_event(dataclasses.replace(first, note="另一个"), sc_key, sc_kid)),
            "CASE_EVENT_INVALID",
            "different event",
        ),
        (
            one(sign_event(dataclasses.replace(accepted, seq=3), sc_key, sc_kid)),
            "CASE_EVENT_INVALID",
            "in order",
        ),
        (one(sign_event(accepted, sc_key, sc_kid)), "CASE_EVENT_INVALID", "its own parts"),
        (
            one(
                sign_event(dataclasses.replace(accepted, part=0), sc_key, sc_kid),
                [cases_pb2.Material(content=b"not named")],
            ),
            "CASE_EVENT_INVALID",
            "not one the event names",
        ),
    ]
    zj_event = dataclasses.replace(accepted, origin=ZJ, seq=1, agency="zj.hrss")
    as_zj = [
        (one(sign_event(first, sc_key, sc_kid)), "CASE_EVENT_INVALID", "its own region's"),
        (one(sign_event(zj_event, zj_key, zj_kid)), "CASE_EVENT_INVALID", "has no part"),
    ]
    before = len(await cq_cases.book.store.changes(0, 100))
    for owner, attempts in (
        (SC, as_sc),
        (ZJ, as_zj),
        ("sc.hsa", [(one("a.b.c"), "NOT_AUTHORISED_ROLE", "")]),
    ):
        async with channel(cluster.ports[CQ], credentials_as(cluster.fed, owner, CQ)) as ch:
            stub = exchange_pb2_grpc.PeerStub(ch)
            for request, reason, words in attempts:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.DeliverCaseEvents(request, timeout=TIMEOUT)
                assert caught.value.code() not in NEVER
                assert error_info(caught.value).reason == reason, caught.value.details()
                assert words in (caught.value.details() or "")
                assert APPLICANT not in (caught.value.details() or "")
    assert len(await cq_cases.book.store.changes(0, 100)) == before
    audit = cluster.gateways[CQ].audit
    assert audit is not None
    receipts = [
        r
        for _, r in await audit.store.query(AuditQuery(limit=1000))
        if r.rpc == "/tongban.v1.Peer/DeliverCaseEvents" and r.reason
    ]
    assert len(receipts) == 7  # every one that reached the book: not the edge's bounds


async def test_every_bad_act_is_a_contract_reason_and_changes_nothing(cluster: Cluster) -> None:
    """重庆's handler on a 川渝 case: a request for material naming nothing, an unknown, the
    same one twice or 10,000 ids; a supplement or a result where none goes; an approval of a
    handling part without its result, with a 10 MB one or a zip bomb; the applicant's portal
    token acting; each a contract reason, and the case as it was."""
    registry = load_registry(cluster.fed)
    window = Caller(cluster, "sc.hsa", SC)
    made = await materials(cluster.fed, registry)
    case = await window.call("Submit", submit("act-bad", made))
    handler = Caller(cluster, "cq.hsa", CQ)
    applicant = Caller(cluster, "cq.hsa", CQ, applicant=APPLICANT)
    try:
        get = cases_pb2.GetCaseRequest(case_id=case.case_id)
        for _ in range(200):  # the window's deliverer brings the case to 重庆
            with contextlib.suppress(grpc.aio.AioRpcError):
                await handler.call("Get", get)
                break
            await asyncio.sleep(0.1)
        accept = cases_pb2.ActRequest(
            request_id="acc", case_id=case.case_id, part=1, action=cases_pb2.CASE_ACTION_ACCEPT
        )
        await handler.call("Act", accept)
        before = await handler.call("Get", get)

        def act(n: int, action: int, **more: Any) -> cases_pb2.ActRequest:
            fields: dict[str, Any] = {"note": "理由", **more}
            return cases_pb2.ActRequest(
                request_id=f"bad-{n}", case_id=case.case_id, part=1, action=action, **fields
            )

        ask, approve = cases_pb2.CASE_ACTION_REQUEST_MATERIAL, cases_pb2.CASE_ACTION_APPROVE
        huge = cases_pb2.Material(content=b"x" * (10 * 1024 * 1024))
        bomb = cases_pb2.Material(content=zip_bomb())
        attempts = [
            (act(1, ask), "MATERIAL_MISSING"),
            (act(2, ask, material_ids=["no-such"]), "MATERIAL_MISSING"),
            (act(3, ask, material_ids=["id-card", "id-card"]), "MATERIAL_MISSING"),
            (act(4, ask, material_ids=[f"m{i}" for i in range(10_000)]), "MATERIAL_MISSING"),
            (act(5, ask, material_ids=["id-card"], note=""), "INVALID_ARGUMENT_FORMAT"),
            (act(6, ask, material_ids=["id-card"], materials=[made[0]]), "MATERIAL_MISSING"),
            (act(7, approve), "MATERIAL_MISSING"),
            (act(8, approve, result=huge), "MATERIAL_TOO_LARGE"),
            (act(9, approve, result=bomb), "MATERIAL_INVALID"),
            (act(10, cases_pb2.CASE_ACTION_REJECT, note=""), "INVALID_ARGUMENT_FORMAT"),
            (act(11, cases_pb2.CASE_ACTION_SUPPLEMENT, materials=made), "CASE_PART_NOT_YOURS"),
            (act(12, cases_pb2.CASE_ACTION_ACCEPT), "CASE_ACTION_NOT_ALLOWED"),
        ]
        for request, reason in attempts:
            _, got, _ = await handler.refused("Act", request)
            assert got == reason, (request.request_id, got)
        _, got, _ = await applicant.refused("Act", act(13, cases_pb2.CASE_ACTION_APPROVE))
        assert got == "NOT_AUTHORISED_ROLE"
        _, got, _ = await applicant.refused("Submit", submit("portal-1", made))
        assert got == "NOT_AUTHORISED_ROLE"
        after = await handler.call("Get", get)
        assert after.history == before.history
        assert after.parts == before.parts
    finally:
        for who in (window, handler, applicant):
            await who.close()
