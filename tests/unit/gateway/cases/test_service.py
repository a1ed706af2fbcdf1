"""The Cases service over the case book (`gateway.services.cases`): messages in and out, the
request token (an applicant's portal token included), Watch's first message and its changes,
and its bound per agency. Called directly with the caller set, as the interceptor does."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from case_support import APPLICANT, CQ, MEDICAL, SC, Clock, Region, deliver, make_region, sealed
from flow_support import NOW, agency_caller, token
from support import Federation

from gateway.audit import Outcome
from gateway.errors import Refusal
from gateway.identity import current_caller
from gateway.services.cases import CasesService
from gateway.tokens import TokenVerifier
from registry import Registry
from tongban.v1 import cases_pb2, credentials_pb2


class Context:
    def __init__(self, bearer: str = "") -> None:
        self.bearer = bearer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.bearer}"),) if self.bearer else ()


@contextlib.contextmanager
def calling(fed: Federation, name: str, region: str) -> Iterator[None]:
    reset = current_caller.set(agency_caller(fed, name, region))
    try:
        yield
    finally:
        current_caller.reset(reset)


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
async def sc(fed: Federation, registry: Registry, clock: Clock) -> Region:
    return await make_region(fed, registry, SC, clock)


@pytest.fixture
async def cq(fed: Federation, registry: Registry, clock: Clock) -> Region:
    return await make_region(fed, registry, CQ, clock)


def service(region: Region, clock: Clock, **options: Any) -> CasesService:
    return CasesService(region.book, TokenVerifier(region=region.region, clock=clock), **options)


async def submit_request(fed: Federation, registry: Registry) -> cases_pb2.SubmitCaseRequest:
    card = await sealed(fed, registry, CQ, {"credential_type": "id_card"}, material_id="id-card")
    form = await sealed(fed, registry, SC, b"form", detached=True, material_id="filing-form")
    return cases_pb2.SubmitCaseRequest(
        request_id="svc-1",
        matter_code=MEDICAL,
        applicant_id=APPLICANT,
        materials=[
            cases_pb2.Material(
                material_id=m.material_id, content=m.content, signed_data=m.signed_data
            )
            for m in (card, form)
        ],
        note="窗口收件",
    )


async def test_submit_get_list_and_act_through_the_service(
    fed: Federation, registry: Registry, sc: Region, cq: Region, clock: Clock
) -> None:
    window, handler = service(sc, clock), service(cq, clock)
    sc_token = Context(token(fed, "sc.hsa", SC))
    with calling(fed, "sc.hsa", SC):
        case = await window.Submit(await submit_request(fed, registry), sc_token)  # type: ignore[arg-type]
    assert case.state == cases_pb2.CASE_STATE_OPEN
    assert [p.state for p in case.parts] == [
        cases_pb2.PART_STATE_DONE,
        cases_pb2.PART_STATE_READY,
    ]
    assert [m.format for m in case.materials] == [credentials_pb2.SEAL_FORMAT_JADES] * 2
    assert case.applicant_id == APPLICANT
    assert case.audit_id == f"audit.tongban/{SC}#0"
    assert [e.kind for e in case.history] == ["submitted"]
    assert sc.records[-1].caller_operator == "经办人 张三"
    with calling(fed, "sc.hsa", SC):
        got = await window.Get(  # type: ignore[arg-type]
            cases_pb2.GetCaseRequest(case_id=case.case_id, include_contents=True), sc_token
        )
        listed = await window.List(cases_pb2.ListCasesRequest(), sc_token)  # type: ignore[arg-type]
    assert got.materials[1].signed_data == b"form"
    assert [c.case_id for c in listed.cases] == [case.case_id]
    assert not listed.cases[0].history
    await deliver(sc, cq)
    cq_token = Context(token(fed, "cq.hrss", CQ))
    with calling(fed, "cq.hrss", CQ):
        accepted = await handler.Act(  # type: ignore[arg-type]
            cases_pb2.ActRequest(
                request_id="a-1", case_id=case.case_id, part=1, action=cases_pb2.CASE_ACTION_ACCEPT
            ),
            cq_token,
        )
        assert accepted.parts[1].agency == "cq.hrss"
        with pytest.raises(Refusal) as caught:
            await handler.Act(  # type: ignore[arg-type]
                cases_pb2.ActRequest(request_id="a-2", case_id=case.case_id, part=1), cq_token
            )
    assert caught.value.reason == "INVALID_ARGUMENT_FORMAT"
    assert cq.records[-1].reason == "INVALID_ARGUMENT_FORMAT"


async def test_a_call_without_a_token_or_from_another_region_is_refused_and_audited(
    fed: Federation, registry: Registry, sc: Region, clock: Clock
) -> None:
    window = service(sc, clock)
    with calling(fed, "sc.hsa", SC), pytest.raises(Refusal) as caught:
        await window.List(cases_pb2.ListCasesRequest(), Context())  # type: ignore[arg-type]
    assert caught.value.reason == "TOKEN_INVALID"
    assert (sc.records[-1].outcome, sc.records[-1].reason) == (Outcome.DENIED, "TOKEN_INVALID")
    with calling(fed, "cq.hrss", CQ), pytest.raises(Refusal) as caught:
        await window.List(  # type: ignore[arg-type]
            cases_pb2.ListCasesRequest(), Context(token(fed, "cq.hrss", CQ))
        )
    assert caught.value.reason == "NOT_AUTHORISED_ROLE"


async def test_an_applicant_sees_their_own_cases_through_the_portal_token(
    fed: Federation, registry: Registry, sc: Region, clock: Clock
) -> None:
    window = service(sc, clock)
    with calling(fed, "sc.hsa", SC):
        case = await window.Submit(  # type: ignore[arg-type]
            await submit_request(fed, registry), Context(token(fed, "sc.hsa", SC))
        )
    portal = Context(token(fed, "sc.data", SC, applicant=APPLICANT))
    stranger = Context(token(fed, "sc.data", SC, applicant="110105194912310038"))
    with calling(fed, "sc.data", SC):
        mine = await window.List(cases_pb2.ListCasesRequest(), portal)  # type: ignore[arg-type]
        theirs = await window.List(cases_pb2.ListCasesRequest(), stranger)  # type: ignore[arg-type]
        shown = await window.Get(cases_pb2.GetCaseRequest(case_id=case.case_id), portal)  # type: ignore[arg-type]
        with pytest.raises(Refusal) as caught:
            await window.Submit(await submit_request(fed, registry), portal)  # type: ignore[arg-type]
    assert [c.case_id for c in mine.cases] == [case.case_id]
    assert list(theirs.cases) == []
    assert shown.case_id == case.case_id
    assert caught.value.reason == "NOT_AUTHORISED_ROLE"
    text = json.dumps([r.canonical.decode() for r in sc.records])
    assert APPLICANT not in text
    assert "110105194912310038" not in text


async def test_watch_sends_the_case_then_each_change_and_is_bounded_per_agency(
    fed: Federation, registry: Registry, sc: Region, cq: Region, clock: Clock
) -> None:
    window = service(sc, clock, max_watches_per_agency=1, poll_seconds=0.05)
    sc_token = Context(token(fed, "sc.hsa", SC))
    with calling(fed, "sc.hsa", SC):
        case = await window.Submit(await submit_request(fed, registry), sc_token)  # type: ignore[arg-type]
        stream = window.Watch(cases_pb2.WatchCasesRequest(case_id=case.case_id), sc_token)  # type: ignore[arg-type]
        first = await anext(stream)
        assert first.case.case_id == case.case_id
        assert not first.HasField("event")
        second = window.Watch(cases_pb2.WatchCasesRequest(), sc_token)  # type: ignore[arg-type]
        with pytest.raises(Refusal) as caught:
            await anext(second)
        assert caught.value.reason == "TOO_MANY_CALLS"
        waiting = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.01)
        assert not waiting.done()
    await deliver(sc, cq)
    cq_token = Context(token(fed, "cq.hrss", CQ))
    with calling(fed, "cq.hrss", CQ):
        await service(cq, clock).Act(  # type: ignore[arg-type]
            cases_pb2.ActRequest(
                request_id="w-1", case_id=case.case_id, part=1, action=cases_pb2.CASE_ACTION_ACCEPT
            ),
            cq_token,
        )
    await deliver(cq, sc)
    update = await asyncio.wait_for(waiting, 2)
    assert update.event.kind == "accepted"
    assert update.event.region == CQ
    assert update.event.applied
    assert update.case.parts[1].state == cases_pb2.PART_STATE_IN_PROGRESS
    await stream.aclose()
    assert sc.book.listeners == sc.book.listeners[:1]  # the watch's listener is gone
    with calling(fed, "sc.hsa", SC):
        again = window.Watch(cases_pb2.WatchCasesRequest(), sc_token)  # type: ignore[arg-type]
        assert (await anext(again)).case.case_id == case.case_id  # its slot was freed
        await again.aclose()


async def test_the_watches_of_a_gateway_share_one_read_of_each_change(
    fed: Federation,
    registry: Registry,
    sc: Region,
    cq: Region,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    window = service(sc, clock, poll_seconds=60.0)  # only a write here wakes the follower
    reads: list[int] = []
    changes = sc.store.changes

    async def counted(after: int, limit: int) -> Any:
        reads.append(after)
        return await changes(after, limit)

    monkeypatch.setattr(sc.store, "changes", counted)
    sc_token = Context(token(fed, "sc.hsa", SC))
    with calling(fed, "sc.hsa", SC):
        case = await window.Submit(await submit_request(fed, registry), sc_token)  # type: ignore[arg-type]
        streams = [
            window.Watch(  # type: ignore[arg-type]
                cases_pb2.WatchCasesRequest(case_id=case.case_id if i % 2 else ""), sc_token
            )
            for i in range(4)
        ]
        for stream in streams:
            assert (await anext(stream)).case.case_id == case.case_id
        waiting = [asyncio.ensure_future(anext(stream)) for stream in streams]
        await asyncio.sleep(0.05)
    before = len(reads)
    await deliver(sc, cq)
    with calling(fed, "cq.hrss", CQ):
        await service(cq, clock).Act(  # type: ignore[arg-type]
            cases_pb2.ActRequest(
                request_id="w-2", case_id=case.case_id, part=1, action=cases_pb2.CASE_ACTION_ACCEPT
            ),
            Context(token(fed, "cq.hrss", CQ)),
        )
    await deliver(cq, sc)
    updates = await asyncio.wait_for(asyncio.gather(*waiting), 2)
    assert [u.event.kind for u in updates] == ["accepted"] * 4
    assert len(reads) - before == 1  # four streams, one read of the change
    for stream in streams:
        await stream.aclose()
    assert len(sc.book.listeners) == 1  # the follower stopped with the last stream
    before = len(reads)
    for listener in list(sc.book.listeners):
        listener()
    await asyncio.sleep(0.05)
    assert len(reads) == before  # nobody watches: nothing is read
