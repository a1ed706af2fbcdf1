"""The citizen's data tracker across regions (issue 21, part 2), on one three-region cluster:
a citizen's trail through their home gateway holds exactly the three logs' records about them
(checked against Oversight.QueryAudit) and nothing about anyone else; a citizen may not read
another's trail, at home or by asking a peer; oversight may read any trail, a requester none; a
tampered or replayed sealed answer, and a region that is down, are marked and not shown."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
import pytest_asyncio
from cli_support import Run
from google.protobuf.timestamp_pb2 import Timestamp
from query_support import CALL_TIMEOUT, Cluster, bearer, request, running_cluster
from support import credentials_as, error_info, make_federation

from gateway import rpcs
from gateway.audit import AuditQuery, Outcome, pseudonymize
from gateway.services.tracker import Tracker
from tongban.v1 import (
    common_pb2,
    exchange_pb2,
    exchange_pb2_grpc,
    oversight_pb2,
    oversight_pb2_grpc,
    tracker_pb2,
    tracker_pb2_grpc,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

HOME = "330000"  # the citizen's home region: its portal and its gateway
OVERSEERS = {"330000": "zj.data", "510000": "sc.data", "500000": "cq.data"}
PORTAL = "zj.mca"  # plays the region's citizen portal (a token with the applicant claim)
SI = ("si.participation", "SI-TRANSFER")


@dataclass
class World:
    cluster: Cluster
    citizen: str  # A: asked about from two requesting regions, of two owners
    other: str  # B: asked about once
    cut: datetime  # after the queries, before any trail was read


def _stamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    root = tmp_path_factory.mktemp("tracker")
    fed = make_federation(root / "fed")
    fed.publish()
    async with running_cluster(fed, root) as cluster:
        zj, sc = cluster.data["330000"], cluster.data["510000"]
        held = [
            p
            for p in zj.population(40)
            if zj.record(SI[0], p) is not None and sc.record(SI[0], p) is not None
        ]
        citizen, other = held[0], held[1]
        for agency, owner, subject in (
            ("sc.hrss", "330000", citizen),  # 四川 asks 浙江 about A
            ("sc.hrss", "330000", citizen),  # ... again: a cache hit
            ("cq.hrss", "510000", citizen),  # 重庆 asks 四川 about A
            ("sc.hrss", "330000", other),  # 四川 asks 浙江 about B
        ):
            async with cluster.exchange(agency) as stub:
                await stub.Query(
                    request(owner, *SI, subject),
                    metadata=bearer(cluster.token(agency)),
                    timeout=CALL_TIMEOUT,
                )
        yield World(cluster, citizen, other, datetime.now(UTC))


@contextlib.asynccontextmanager
async def tracker_as(world: World, agency: str) -> AsyncIterator[tracker_pb2_grpc.TrackerAsyncStub]:
    async with grpc.aio.secure_channel(
        f"localhost:{world.cluster.ports[HOME]}",
        credentials_as(world.cluster.fed, agency, HOME),
    ) as channel:
        yield tracker_pb2_grpc.TrackerStub(channel)


async def trail(world: World, agency: str, token: str, **asked: Any) -> tracker_pb2.TrailResponse:
    async with tracker_as(world, agency) as stub:
        answer: tracker_pb2.TrailResponse = await stub.Trail(
            tracker_pb2.TrailRequest(**asked), metadata=bearer(token), timeout=CALL_TIMEOUT
        )
        return answer


def portal_token(world: World, citizen: str) -> str:
    return world.cluster.token(PORTAL, applicant=citizen)


async def logged(world: World, region: str, subject: str, **asked: Any) -> list[Any]:
    """QueryAudit of `region`'s log about `subject`, by that region's oversight agency."""
    overseer = OVERSEERS[region]
    async with grpc.aio.secure_channel(
        f"localhost:{world.cluster.ports[region]}",
        credentials_as(world.cluster.fed, overseer, region),
    ) as channel:
        stub = oversight_pb2_grpc.OversightStub(channel)
        return [
            r
            async for r in stub.QueryAudit(
                oversight_pb2.QueryAuditRequest(subject_id=subject, page_size=1000, **asked),
                timeout=CALL_TIMEOUT,
            )
        ]


async def ask_peer(
    world: World, region: str, token: str, subject: str, agency: str = PORTAL
) -> None:
    """Peer.SubjectTrail on `region`'s gateway, as the home gateway (its TLS identity) relaying
    `agency`'s token."""
    fed = world.cluster.fed
    async with grpc.aio.secure_channel(
        f"localhost:{world.cluster.ports[region]}", credentials_as(fed, HOME, region)
    ) as channel:
        await exchange_pb2_grpc.PeerStub(channel).SubjectTrail(
            exchange_pb2.SubjectTrailRequest(
                token=token,
                caller=common_pb2.CallerIdentity(
                    agency_id=agency,
                    region=HOME,
                    operator="经办人 张三",
                    certificate_thumbprint=world.cluster.thumbprint(agency),
                ),
                subject_id=subject,
                nonce="n" * 32,
            ),
            timeout=CALL_TIMEOUT,
        )


def refused(caught: pytest.ExceptionInfo[grpc.aio.AioRpcError]) -> tuple[str, str]:
    return caught.value.code().name, error_info(caught.value).reason


def shown(answer: tracker_pb2.TrailResponse) -> dict[str, tuple[bool, str]]:
    return {r.region: (r.answered, r.problem) for r in answer.regions}


async def test_the_trail_is_exactly_the_three_logs_records_about_the_citizen(
    world: World,
) -> None:
    answer = await trail(world, PORTAL, portal_token(world, world.citizen), until=_stamp(world.cut))
    assert shown(answer) == dict.fromkeys(OVERSEERS, (True, ""))
    expected = []
    for region in OVERSEERS:
        for r in await logged(world, region, world.citizen, until=_stamp(world.cut)):
            expected.append(
                (r.time.ToDatetime(), region, r.index, r.audit_id, r.caller_agency, r.cache_hit)
            )
    got = [
        (e.time.ToDatetime(), e.region, e.audit_index, e.audit_id, e.requester_agency, e.cache_hit)
        for e in answer.entries
    ]
    assert got == sorted(expected)  # the same records, oldest first
    assert {e.region for e in answer.entries} == set(OVERSEERS)  # every log had some
    assert [r.entries for r in answer.regions] == [
        sum(e.region == r.region for e in answer.entries) for r in answer.regions
    ]
    hits = [(e.region, e.rpc) for e in answer.entries if e.cache_hit]
    assert ("510000", rpcs.QUERY) in hits  # 四川 answered the repeat from its cache
    first = next(e for e in answer.entries if e.region == "330000")
    assert (first.requester_agency_name, first.purpose_name) == (
        "四川省人力资源和社会保障厅",
        "企业职工基本养老保险关系转移接续",
    )
    assert (first.outcome, first.case_id) == (common_pb2.OUTCOME_ALLOWED, "CASE-2026-0001")
    # nothing about B: none of B's records, in any region, is in A's trail
    about_b = {
        region: {r.index for r in await logged(world, region, world.other)} for region in OVERSEERS
    }
    assert about_b["330000"]
    assert about_b["510000"]
    for region, indexes in about_b.items():
        assert not indexes & {e.audit_index for e in answer.entries if e.region == region}


async def test_every_trail_is_audited_at_home_and_by_each_peer_under_pseudonyms(
    world: World,
) -> None:
    await trail(world, PORTAL, portal_token(world, world.citizen))
    for region in OVERSEERS:
        gateway = world.cluster.gateways[region]
        assert gateway.audit is not None
        assert gateway.config.audit is not None
        pseudonym = pseudonymize(world.citizen, gateway.config.audit.pseudonym_key)
        found = [r for _, r in await gateway.audit.store.query(AuditQuery(limit=10_000))]
        made = rpcs.TRAIL if region == HOME else rpcs.SUBJECT_TRAIL
        mine = [r for r in found if r.rpc == made]
        assert mine
        assert all(r.subject == pseudonym for r in mine)
        assert all(world.citizen not in r.canonical.decode() for r in found)
        assert mine[-1].outcome is Outcome.ALLOWED
        assert mine[-1].caller_agency == PORTAL
        if region != HOME:  # the peer kept the digest of what it sealed and what it answered
            assert len(mine[-1].sealed_digest) == len(mine[-1].request_digest) == 64


async def test_a_citizen_may_not_read_another_citizens_trail(world: World) -> None:
    token = portal_token(world, world.citizen)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await trail(world, PORTAL, token, subject_id=world.other)
    assert refused(caught) == ("PERMISSION_DENIED", "SUBJECT_NOT_CALLER")
    for region in ("510000", "500000"):  # nor by asking a peer directly with A's token
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ask_peer(world, region, token, world.other)
        assert refused(caught) == ("PERMISSION_DENIED", "SUBJECT_NOT_CALLER")
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # a peer is told whose trail, always
        await ask_peer(world, "510000", token, "")
    assert refused(caught) == ("INVALID_ARGUMENT", "SUBJECT_ID_INVALID")
    # the same token about its own citizen is answered by the peer
    await ask_peer(world, "510000", token, world.citizen)
    home = world.cluster.gateways[HOME]
    assert home.audit is not None
    assert home.config.audit is not None
    records = [r for _, r in await home.audit.store.query(AuditQuery(limit=10_000))]
    denied = [r for r in records if r.rpc == rpcs.TRAIL and r.reason == "SUBJECT_NOT_CALLER"]
    assert denied[-1].subject == pseudonymize(world.other, home.config.audit.pseudonym_key)
    assert denied[-1].outcome is Outcome.DENIED


async def test_an_oversight_agency_reads_any_trail_a_requester_none(world: World) -> None:
    overseer = world.cluster.token("zj.data")
    answer = await trail(world, "zj.data", overseer, subject_id=world.other)
    assert shown(answer) == dict.fromkeys(OVERSEERS, (True, ""))
    assert {e.region for e in answer.entries} >= {"330000", "510000"}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await trail(world, "zj.data", overseer)  # oversight names the subject
    assert refused(caught) == ("INVALID_ARGUMENT", "SUBJECT_ID_INVALID")
    requester = world.cluster.token("zj.hrss")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await trail(world, "zj.hrss", requester, subject_id=world.other)
    assert refused(caught) == ("PERMISSION_DENIED", "TRAIL_NOT_ALLOWED")
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # a peer decides the same
        await ask_peer(world, "510000", requester, world.other, agency="zj.hrss")
    assert refused(caught) == ("PERMISSION_DENIED", "TRAIL_NOT_ALLOWED")
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # a token relayed for another agency
        await ask_peer(world, "510000", requester, world.other)
    assert refused(caught) == ("UNAUTHENTICATED", "TOKEN_BINDING_MISMATCH")


async def test_a_tampered_or_replayed_answer_is_marked_and_not_shown(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    peer = world.cluster.gateways["500000"].tracker
    assert isinstance(peer, Tracker)
    honest = peer.subject_trail
    kept: list[str] = []

    async def tampered(request: Any, caller: Any) -> exchange_pb2.SubjectTrailResponse:
        answer = await honest(request, caller)
        header, payload, signature = answer.sealed.split(".")
        document = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        assert document["entries"]
        document["entries"] = document["entries"][1:]  # hide the first access
        forged = base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()
        return exchange_pb2.SubjectTrailResponse(sealed=f"{header}.{forged}.{signature}")

    async def kept_honest(request: Any, caller: Any) -> exchange_pb2.SubjectTrailResponse:
        answer = await honest(request, caller)
        kept.append(answer.sealed)
        return answer

    async def replayed(request: Any, caller: Any) -> exchange_pb2.SubjectTrailResponse:
        await honest(request, caller)
        return exchange_pb2.SubjectTrailResponse(sealed=kept[0])  # an earlier call's answer

    token = portal_token(world, world.citizen)
    marked = {"330000": (True, ""), "510000": (True, ""), "500000": (False, "bad seal")}
    monkeypatch.setattr(peer, "subject_trail", tampered)
    answer = await trail(world, PORTAL, token)
    assert shown(answer) == marked
    assert {e.region for e in answer.entries} == {"330000", "510000"}
    monkeypatch.setattr(peer, "subject_trail", kept_honest)
    assert shown(await trail(world, PORTAL, token))["500000"] == (True, "")
    monkeypatch.setattr(peer, "subject_trail", replayed)
    answer = await trail(world, PORTAL, token)  # a true seal, for another call
    assert shown(answer) == marked
    assert {e.region for e in answer.entries} == {"330000", "510000"}


async def test_the_cli_shows_a_trail_and_a_refusal(world: World, run: Run) -> None:
    """`tongban tracker trail`, as docs/oversight.md shows it: an overseer's, a portal's."""
    gateway = f"localhost:{world.cluster.ports[HOME]}"
    pki = world.cluster.fed.pki
    code, out, err = await asyncio.to_thread(
        run, "tracker", "trail", "--gateway", gateway, "--pki", pki, "--agency", "zj.data",
        "--subject-id", world.other, "--json",
    )  # fmt: skip
    assert code == 0, err
    document = json.loads(out)
    assert [r["answered"] for r in document["regions"]] == [True, True, True]
    assert {e["region"] for e in document["entries"]} >= {"330000", "510000"}
    code, out, err = await asyncio.to_thread(
        run, "tracker", "trail", "--gateway", gateway, "--pki", pki, "--agency", PORTAL,
        "--applicant", world.citizen, "--subject-id", world.other,
    )  # fmt: skip
    assert code == 1
    assert "PERMISSION_DENIED SUBJECT_NOT_CALLER" in err
    code, out, err = await asyncio.to_thread(
        run, "tracker", "trail", "--gateway", gateway, "--pki", pki, "--agency", PORTAL,
        "--applicant", world.citizen,
    )  # fmt: skip
    assert code == 0, err
    assert "region 500000: answered" in out
    assert world.citizen not in out + err


async def test_a_region_that_does_not_answer_in_time_is_marked_and_the_rest_shown(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = world.cluster.gateways[HOME].tracker
    peer = world.cluster.gateways["500000"].tracker
    assert isinstance(home, Tracker)
    assert isinstance(peer, Tracker)
    honest = peer.subject_trail

    async def hanging(request: Any, caller: Any) -> exchange_pb2.SubjectTrailResponse:
        await asyncio.sleep(CALL_TIMEOUT)
        return await honest(request, caller)

    monkeypatch.setattr(peer, "subject_trail", hanging)
    monkeypatch.setattr(home, "_timeout", 0.5)  # [exchange] tracker_peer_timeout_seconds
    answer = await trail(world, PORTAL, portal_token(world, world.citizen))
    assert shown(answer) == {
        "330000": (True, ""),
        "510000": (True, ""),
        "500000": (False, "timeout"),
    }
    assert {e.region for e in answer.entries} == {"330000", "510000"}


async def test_a_region_that_is_down_is_marked_and_the_rest_shown(world: World) -> None:
    """Last in the module: it stops 重庆's gateway."""
    # taken out of the cluster first, so that its teardown does not stop it a second time
    await world.cluster.gateways.pop("500000").stop(0)
    answer = await trail(world, PORTAL, portal_token(world, world.citizen))
    regions = shown(answer)
    assert regions["500000"][0] is False
    assert regions["500000"][1] in {"unreachable", "timeout"}
    assert regions["330000"] == regions["510000"] == (True, "")
    assert {e.region for e in answer.entries} == {"330000", "510000"}
